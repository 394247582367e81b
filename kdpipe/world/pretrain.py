"""Contrastive pretraining of a tiny world CLIP on clean renders, cached by fingerprint.

Each step draws a class-balanced batch (every class ``batch_size / 64`` times) from a bank of
clean renders, and one caption per class from the templates. Image -> text is then a 64-way
softmax over the captions, and text -> image spreads each caption's target evenly over the
images of its class: a multi-positive target. A plain CLIP loss would call the other images of the
same class negatives, and with each class ~4 times per batch it bottoms out high. Encoding one
caption per class instead of one per image also makes the text side 4x cheaper.

The token embedding holds the whole 49,408-word vocabulary (so open_clip's tokenizer works
unchanged) but only a few dozen words occur in captions: it gets sparse gradients and a lazy
Adam, so the untouched rows cost nothing per step.

The "full" preset pretrains world-b and world-l side by side (one core each) in about 10 minutes
on an idle 2-core machine (world-l's 600 steps set it: 589 s measured); "quick" takes well under a
minute per model.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError
from kdpipe.io import atomic_path, read_json, write_json
from kdpipe.pipeline.hashing import digest
from kdpipe.progress import Progress
from kdpipe.world.cache import world_cache_dir
from kdpipe.world.captions import caption_table
from kdpipe.world.classes import NUM_CLASSES
from kdpipe.world.render import RENDER_VERSION, render_batch
from kdpipe.world.zeroshot import evaluate_world_zeroshot, to_tensor

# Bump when the training procedure changes in a way the config does not show.
PRETRAIN_VERSION = 1
WORLD_ARCHS = ("world-b", "world-l")
# Keeps the pretraining bank's images apart from the downstream dataset's and the evaluation's.
_BANK_STREAM = 0xBA4C

ProgressFn = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class PretrainConfig:
    steps: int
    batch_size: int = 256  # a multiple of 64: each class appears batch_size / 64 times
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    bank_per_class: int = 400  # clean renders per class, drawn once; batches sample from them
    eval_per_class: int = 20  # held-out renders per class for the clean/shifted zero-shot summary


# Step counts per architecture. "full" is the demo default; "quick" is for tests and --quick.
# Measured (seed 0, shifted HM on held-out renders): world-l 600 steps 67 (450 steps: 59);
# world-b 300 steps 48, 500 steps 56.5. world-l runs ~2.5x slower per step, so side by side on two
# cores it sets the wall time and world-b's 500 steps come free; the teacher keeps a ~10 point lead.
PRESETS: dict[str, dict[str, PretrainConfig]] = {
    "full": {
        "world-b": PretrainConfig(steps=500, batch_size=128),
        "world-l": PretrainConfig(steps=600, batch_size=128),
    },
    "quick": {
        "world-b": PretrainConfig(steps=80, batch_size=128, bank_per_class=64),
        "world-l": PretrainConfig(steps=80, batch_size=128, bank_per_class=64),
    },
}


@dataclass
class PretrainResult:
    path: Path  # the checkpoint (a loadable spec on its own)
    arch: str
    fingerprint: str
    cached: bool  # True when the weights came from the cache instead of training now
    seconds: float  # training wall time when they were produced (not this call's, if cached)
    steps: int
    final_loss: float
    zeroshot: dict = field(default_factory=dict)  # clean / base / novel / hm on held-out renders
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def resolve_config(arch: str, budget: str | int | PretrainConfig | None, **overrides) -> PretrainConfig:
    """A preset name ("full"/"quick"), a step count, or a config; keyword overrides win."""
    if isinstance(budget, PretrainConfig):
        cfg = budget
    elif budget is None or isinstance(budget, str):
        name = budget or "full"
        if name not in PRESETS:
            raise KdpipeError(f"unknown pretraining budget {name!r}; expected one of {', '.join(PRESETS)} or a number of steps")
        base = PRESETS[name].get(arch) or PRESETS[name]["world-b"]
        cfg = base
    elif isinstance(budget, int) and budget > 0:
        base = PRESETS["full"].get(arch) or PRESETS["full"]["world-b"]
        cfg = replace(base, steps=budget)
    else:
        raise KdpipeError(f"pretraining budget must be a preset name or a positive number of steps, got {budget!r}")
    cfg = replace(cfg, **overrides) if overrides else cfg
    if cfg.batch_size < NUM_CLASSES or cfg.batch_size % NUM_CLASSES:
        raise KdpipeError(f"pretraining batch_size must be a positive multiple of {NUM_CLASSES} (one slot per class), got {cfg.batch_size}")
    return cfg


def _model_config(arch: str) -> dict:
    from kdpipe.clip.backbones import model_config  # registers the world configs itself

    cfg = model_config(arch)
    if cfg is None:
        raise KdpipeError(f"unknown world architecture {arch!r}; expected one of {', '.join(WORLD_ARCHS)} (or another open_clip config name)")
    return cfg


def pretrain_fingerprint(arch: str, seed: int, cfg: PretrainConfig) -> str:
    """16 hex digits of the canonical hash of everything that changes the weights (the cache key)."""
    return digest(
        {
            "arch": arch,
            "model": _model_config(arch),
            "seed": int(seed),
            "train": asdict(cfg),
            "render": RENDER_VERSION,
            "pretrain": PRETRAIN_VERSION,
        }
    )[:16]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _build_optimizers(model: torch.nn.Module, cfg: PretrainConfig) -> list[torch.optim.Optimizer]:
    # Decay matrices only; gains, biases, embeddings and the temperature are left alone.
    model.token_embedding.sparse = True
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name == "token_embedding.weight":
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    dense = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    sparse = torch.optim.SparseAdam([model.token_embedding.weight], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    return [dense, sparse]


def _create_model(arch: str, seed: int) -> torch.nn.Module:
    import open_clip

    _model_config(arch)
    torch.manual_seed(seed)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "no pretrained weights loaded" is the point here
    try:
        model = open_clip.create_model(arch)
    finally:
        logging.disable(previous)
    return model


def _contrastive_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Image -> its class's caption (64-way), caption -> all images of its class (multi-positive)."""
    logits = scale * img @ txt.T  # [B, C]
    i2t = F.cross_entropy(logits, labels)
    positives = F.one_hot(labels, txt.shape[0]).T.float()  # [C, B]
    target = positives / positives.sum(dim=1, keepdim=True).clamp_min(1.0)
    t2i = -(target * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (i2t + t2i)


def train_world_clip(arch: str, seed: int, cfg: PretrainConfig, progress: ProgressFn | None = None) -> tuple[torch.nn.Module, dict]:
    """Train from scratch and return (model in eval mode, summary)."""
    import open_clip

    model = _create_model(arch, seed)
    tokenizer = open_clip.get_tokenizer(arch)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _BANK_STREAM]))
    per = cfg.batch_size // NUM_CLASSES
    bank = render_batch(np.repeat(np.arange(NUM_CLASSES), cfg.bank_per_class), rng).images
    bank = bank.reshape(NUM_CLASSES, cfg.bank_per_class, *bank.shape[1:])
    table = caption_table()
    tokens = tokenizer([c for row in table for c in row]).view(NUM_CLASSES, len(table[0]), -1)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per)

    optimizers = _build_optimizers(model, cfg)
    model.train()
    start = time.perf_counter()
    loss_ema = None
    for step in range(cfg.steps):
        lr = _lr_at(step, cfg)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        pick = rng.integers(0, cfg.bank_per_class, size=(NUM_CLASSES, per))
        batch = bank[np.arange(NUM_CLASSES)[:, None], pick].reshape(-1, *bank.shape[2:])
        flip = rng.random(len(batch)) < 0.5  # every shape stays itself under a mirror
        batch[flip] = batch[flip, :, ::-1]
        text = tokens[torch.arange(NUM_CLASSES), torch.from_numpy(rng.integers(0, tokens.shape[1], NUM_CLASSES))]

        img = model.encode_image(to_tensor(batch, mean, std), normalize=True)
        txt = model.encode_text(text, normalize=True)
        loss = _contrastive_loss(img, txt, labels, model.logit_scale.exp())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise KdpipeError(f"world pretraining of {arch} diverged at step {step} (loss {value}); lower the learning rate")
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if progress is not None:
            progress(step + 1, cfg.steps, {"loss": loss_ema, "lr": lr})
    seconds = time.perf_counter() - start
    model.eval()
    zs = evaluate_world_zeroshot(model, tokenizer, mean, std, seed=seed, per_class=cfg.eval_per_class)
    return model, {"seconds": seconds, "final_loss": loss_ema or 0.0, "zeroshot": zs.as_dict()}


@contextmanager
def _progress(arch: str, steps: int, progress: bool | ProgressFn) -> Iterator[ProgressFn | None]:
    """The step callback ``pretrain`` was given; with ``progress=True`` one feeding kdpipe's
    progress display (a bar on a terminal, plain lines in logs)."""
    if progress is not True:
        yield progress or None
        return
    with Progress(steps, f"pretrain {arch}") as bar:
        yield lambda step, total, logs: bar.update(step - bar.done, loss=logs["loss"])


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def pretrain(
    arch: str,
    out_path: str | Path | None,
    seed: int = 0,
    budget: str | int | PretrainConfig | None = "full",
    *,
    use_cache: bool = True,
    progress: bool | ProgressFn = False,
    threads: int | None = 1,
    **overrides,
) -> PretrainResult:
    """Pretrain ``arch`` ("world-b" / "world-l") on clean renders and write it to ``out_path``.

    ``budget``: "full" (the demo), "quick" (tests, --quick), a number of steps, or a
    :class:`PretrainConfig`; ``overrides`` replace config fields (e.g. ``lr=5e-4``). The weights
    are written with :func:`kdpipe.clip.save_backbone`, so ``out_path`` alone loads with
    ``load_backbone``; a sidecar ``<out_path>.json`` records the fingerprint, timing and zero-shot
    summary. With ``use_cache`` the checkpoint is also kept under the user cache
    (:func:`kdpipe.world.cache.cache_root`) and reused by any later call with the same fingerprint.
    ``threads``: torch threads while training (1 is fastest for these tiny models on a busy CPU;
    None leaves the setting alone).
    """
    from kdpipe.clip import save_backbone

    cfg = resolve_config(arch, budget, **overrides)
    fp = pretrain_fingerprint(arch, seed, cfg)
    cache_dir = world_cache_dir(fp) if use_cache else None
    cached_ckpt = cache_dir / f"{arch}.safetensors" if cache_dir else None
    cached_meta = cache_dir / f"{arch}.json" if cache_dir else None
    out = Path(out_path).expanduser() if out_path is not None else None
    if out is None and cached_ckpt is None:
        raise KdpipeError("pretrain needs an out_path when the cache is off")

    hit = _from_cache(cached_ckpt, cached_meta, out)
    if hit is not None:
        return hit

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with _progress(arch, cfg.steps, progress) as callback:
            model, summary = train_world_clip(arch, seed, cfg, callback)
    finally:
        torch.set_num_threads(previous_threads)

    meta = {
        "arch": arch,
        "fingerprint": fp,
        "steps": cfg.steps,
        "seconds": summary["seconds"],
        "final_loss": summary["final_loss"],
        "zeroshot": summary["zeroshot"],
        "config": asdict(cfg),
        "seed": int(seed),
    }
    target = out if out is not None else cached_ckpt
    save_backbone(model, arch, target)
    if out is not None:
        write_json(out.with_name(out.name + ".json"), {**meta, "cached": False})
    if cached_ckpt is not None:
        if target != cached_ckpt:
            _copy_atomic(target, cached_ckpt)
        write_json(cached_meta, meta)  # last: its presence marks a complete cache entry
    return PretrainResult(path=target, **{**_result_fields(meta), "cached": False})


def _from_cache(cached_ckpt: Path | None, cached_meta: Path | None, out: Path | None) -> PretrainResult | None:
    if cached_ckpt is None or not (cached_ckpt.is_file() and cached_meta.is_file()):
        return None
    meta = read_json(cached_meta)
    path = cached_ckpt
    if out is not None:
        _copy_atomic(cached_ckpt, out)
        write_json(out.with_name(out.name + ".json"), {**meta, "cached": True})
        path = out
    return PretrainResult(path=path, **{**_result_fields(meta), "cached": True})


def cached_pretrain(arch: str, out_path: str | Path | None, seed: int = 0, budget: str | int | PretrainConfig | None = "full", **overrides) -> PretrainResult | None:
    """The cached result :func:`pretrain` would return (copied to ``out_path``), or None if not cached."""
    cfg = resolve_config(arch, budget, **overrides)
    cache_dir = world_cache_dir(pretrain_fingerprint(arch, seed, cfg))
    out = Path(out_path).expanduser() if out_path is not None else None
    return _from_cache(cache_dir / f"{arch}.safetensors", cache_dir / f"{arch}.json", out)


def _result_fields(meta: dict) -> dict:
    return {
        "arch": meta["arch"],
        "fingerprint": meta["fingerprint"],
        "seconds": float(meta["seconds"]),
        "steps": int(meta["steps"]),
        "final_loss": float(meta["final_loss"]),
        "zeroshot": dict(meta.get("zeroshot", {})),
        "config": dict(meta.get("config", {})),
        "cached": False,
    }
