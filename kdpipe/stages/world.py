"""Stage ``world`` (the demo only): pretrain the demo world's tiny CLIPs, world-b and world-l.

It exists only when ``data.dataset`` is ``world`` and runs before the stages that load a backbone
(teacher, baselines, distill; ``feeds=``), so their fingerprints follow the weights. It writes
``world-b.safetensors`` and ``world-l.safetensors`` (each a backbone spec on its own, with a
``.json`` sidecar saying how it was made) and ``zeroshot.json``: both CLIPs' zero-shot base /
novel / HM on the downstream test split, the yardstick of "the teacher really is stronger".

Pretraining is contrastive on clean renders (:func:`kdpipe.world.pretrain`); the two models train
side by side in two single-threaded processes (two tiny models on two cores do twice the work of
one model on two threads). Finished weights are also kept in the user cache (``$KDPIPE_CACHE``,
else ``~/.cache/kdpipe``) keyed by what produced them, so the next demo copies them instead of
pretraining again.

The downstream dataset is rendered *before* the run (:func:`prepare_world_data`, which
``kdpipe demo`` calls): the stages that read it fingerprint its items when the run is planned,
before any stage runs. The teacher and student backbone settings must point at this stage's
files (:func:`world_backbone_specs`); a bare ``world-l`` would be an untrained CLIP, so that is
refused in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdpipe.config import bounded, config_section, runtime_setting
from kdpipe.io import write_json
from kdpipe.pipeline import register_stage
from kdpipe.errors import KdpipeError
from kdpipe.settings import inputs

DATASET = "world"
STAGE_FOLDER = "world"
STUDENT_ARCH = "world-b"
TEACHER_ARCH = "world-l"
ARCHS = (STUDENT_ARCH, TEACHER_ARCH)
ZEROSHOT = "zeroshot.json"
_PROGRESS_EVERY = 5  # pretraining steps between progress messages from the worker processes


@config_section("world")
@dataclass
class WorldConfig:
    seed: int = bounded(0, ge=0)  # renders of the downstream dataset and pretraining of both CLIPs (numpy seeds are >= 0)
    budget: str = "full"  # pretraining preset of kdpipe.world: full (the demo) or quick (tests)
    student_steps: int = bounded(0, ge=0)  # pretraining steps of world-b (0: the budget's preset)
    teacher_steps: int = bounded(0, ge=0)  # pretraining steps of world-l (0: the budget's preset)
    lr: float = bounded(0.0, ge=0)  # pretraining peak learning rate of both (0: the budget's preset)
    train_per_class: int = bounded(100, ge=1)  # downstream images per class and split (>= 50 keeps gaps above noise)
    val_per_class: int = bounded(50, ge=1)
    test_per_class: int = bounded(50, ge=1)
    cache: bool = runtime_setting(True)  # reuse / fill the user cache of pretrained worlds
    processes: int = runtime_setting(2, ge=1)  # pretraining processes (one model each, one thread each)

    def per_class(self) -> dict[str, int]:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}

    def pretrain_overrides(self, arch: str) -> dict[str, Any]:
        """Fields of kdpipe.world's PretrainConfig that replace the budget preset's."""
        steps = self.teacher_steps if arch == TEACHER_ARCH else self.student_steps
        return {k: v for k, v in (("steps", steps), ("lr", self.lr)) if v}


# ---- what other code needs --------------------------------------------------------------------
def world_checkpoint(run_dir: str | Path, arch: str) -> Path:
    """Where the world stage of ``run_dir`` leaves ``arch``'s weights (a backbone spec once written)."""
    return Path(run_dir).expanduser().resolve() / STAGE_FOLDER / f"{arch}.safetensors"


def world_backbone_specs(run_dir: str | Path) -> dict[str, str]:
    """The settings that point the teacher (world-l) and the student (world-b) at the world stage."""
    return {
        "teacher.backbone": str(world_checkpoint(run_dir, TEACHER_ARCH)),
        "student.backbone": str(world_checkpoint(run_dir, STUDENT_ARCH)),
    }


def prepare_world_data(cfg, progress: bool = False) -> Path:
    """Render the shifted downstream dataset into ``data.root`` (kept when already there)."""
    from kdpipe.world import write_world_dataset

    w = cfg["world"]
    return write_world_dataset(inputs.data_root(cfg), seed=w.seed, per_class=w.per_class(), progress=progress)


def _enabled(cfg) -> bool:
    if cfg["data"].dataset != DATASET:
        return False
    for key in ("teacher.backbone", "student.backbone"):
        spec = str(cfg.value(key))
        if spec in ARCHS:
            flag = "--teacher" if key.startswith("teacher") else "--student"
            raise KdpipeError(
                f"{key} = {spec!r} is an untrained CLIP; point it at the world stage's weights "
                f"({flag} RUN_DIR/world/{spec}.safetensors) or run `kdpipe demo`, which does"
            )
    return True


def _check_data_matches(cfg) -> None:
    """The rendered dataset must be the one these world settings describe (same seed and sizes)."""
    import json

    from kdpipe.world.dataset import META_FILE, world_meta

    w = cfg["world"]
    folder = inputs.data_root(cfg) / DATASET
    try:
        found = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        found = None
    if found != world_meta(w.seed, w.per_class()):
        raise KdpipeError(
            f"the world dataset in {folder} was not rendered with these world.* settings; "
            "run `kdpipe demo` (it renders it) or point --data-root at a matching one"
        )


# ---- pretraining ------------------------------------------------------------------------------
class _QueueProgress:
    """A picklable pretraining progress callback posting ``(arch, step, total, loss)`` to a queue."""

    def __init__(self, arch: str, queue):
        self.arch, self.queue = arch, queue

    def __call__(self, step: int, total: int, logs: dict) -> None:
        if step % _PROGRESS_EVERY == 0 or step == total:
            self.queue.put((self.arch, step, total, float(logs.get("loss", 0.0))))


def _pretrain_job(arch: str, out: str, seed: int, budget: str, overrides: dict, use_cache: bool, queue) -> dict:
    # runs in a worker process: the world configs must be registered there too
    from kdpipe.world.pretrain import pretrain

    progress = _QueueProgress(arch, queue) if queue is not None else False
    return pretrain(arch, out, seed=seed, budget=budget, use_cache=use_cache, progress=progress, threads=1, **overrides).as_dict()


def pretrain_world(ctx) -> dict[str, dict]:
    """Both CLIPs into ``ctx.dir``: cached ones copied, the others trained side by side."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing.managers import SyncManager

    from kdpipe.lifetime import die_with_parent
    from kdpipe.world.pretrain import cached_pretrain, resolve_config

    w = ctx.cfg["world"]
    outs = {arch: str(ctx.dir / f"{arch}.safetensors") for arch in ARCHS}
    overrides = {arch: w.pretrain_overrides(arch) for arch in ARCHS}
    results: dict[str, dict] = {}
    for arch in ARCHS:
        hit = cached_pretrain(arch, outs[arch], w.seed, w.budget, **overrides[arch]) if w.cache else None
        if hit is not None:
            results[arch] = hit.as_dict()
            ctx.log.info(f"{arch}: pretrained weights reused from the cache (fingerprint {hit.fingerprint})")
    todo = [a for a in ARCHS if a not in results]
    if not todo:
        return results
    totals = {a: resolve_config(a, w.budget, **overrides[a]).steps for a in todo}
    ctx.log.info(f"pretraining {', '.join(todo)} on clean renders ({', '.join(f'{a}: {totals[a]} steps' for a in todo)})")
    processes = max(1, min(w.processes, len(todo), os.cpu_count() or 1))
    context = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    manager = SyncManager(ctx=context)
    manager.start(die_with_parent)  # the queue's server, like the pool's workers, ends with this process
    with manager, ProcessPoolExecutor(processes, mp_context=context, initializer=die_with_parent) as pool:
        messages = manager.Queue()
        futures = {
            pool.submit(_pretrain_job, a, outs[a], w.seed, w.budget, overrides[a], w.cache, messages): a for a in todo
        }
        done_steps = {a: 0 for a in todo}
        with ctx.progress(sum(totals.values()), desc=f"pretrain {' + '.join(todo)}") as bar:
            while not all(f.done() for f in futures) or not messages.empty():
                try:
                    arch, step, _total, loss = messages.get(timeout=0.5)
                except queue_mod.Empty:
                    continue
                bar.update(step - done_steps[arch], **{f"{arch} loss": round(loss, 3)})
                done_steps[arch] = step
        for future, arch in futures.items():
            results[arch] = future.result()  # a failure in a worker surfaces here, with its message
    for arch in todo:
        r = results[arch]
        z = r["zeroshot"]  # percent, on held-out renders (WorldPretrainResult.zeroshot)
        ctx.log.info(f"{arch}: {r['steps']} steps in {r['seconds']:.0f}s, loss {r['final_loss']:.3f}; zero-shot on held-out "
                     f"renders: clean {z['clean']:.1f}%, shifted base {z['base']:.1f} novel {z['novel']:.1f} HM {z['hm']:.1f}")
    return results


# ---- zero-shot on the downstream test split ---------------------------------------------------
def downstream_zeroshot(ctx, checkpoints: dict[str, Path]) -> dict[str, dict]:
    """Each CLIP's hand-prompt zero-shot base / novel / HM on the shifted test split (percent)."""
    from kdpipe.clip import load_backbone
    from kdpipe.eval.metrics import split_accuracy
    from kdpipe.methods import build_method
    from kdpipe.eval.scoring import collect_logits, method_scorer

    cfg = ctx.cfg
    device = inputs.device_of(cfg)
    splits = inputs.load_splits(cfg)
    scorers = []
    for arch, path in checkpoints.items():
        method = build_method("zeroshot", load_backbone(str(path), device=device), splits.classnames, dataset=DATASET)
        scorers.append(method_scorer(method.to(device).eval(), arch, splits.classnames))
    with ctx.progress(len(splits.test), desc="zero-shot on the shifted test split", unit="image") as bar:
        logits, labels = collect_logits(scorers, splits.test, 256, 0, device, False, progress=lambda n: bar.update(n, images=n))
    return {s.role: split_accuracy(l, labels) for s, l in zip(scorers, logits)}


@register_stage(
    "world",
    reads=["world", "data.dataset"],
    outputs=[f"{a}.safetensors" for a in ARCHS] + [ZEROSHOT],
    feeds=["teacher", "baseline", "distill"],
    when=_enabled,
    identity=inputs.data_identity,
    headline="teacher_gain",
    description="pretrain the demo world's tiny CLIPs (world-b student, world-l teacher)",
)
def run(ctx) -> dict[str, Any]:
    _check_data_matches(ctx.cfg)
    results = pretrain_world(ctx)
    zeroshot = downstream_zeroshot(ctx, {a: ctx.dir / f"{a}.safetensors" for a in ARCHS})
    for arch in ARCHS:
        z = zeroshot[arch]
        ctx.log.info(f"{arch} zero-shot on the shifted test split: base {z['base']:.1f} novel {z['novel']:.1f} HM {z['hm']:.1f}")
    write_json(ctx.dir / ZEROSHOT, {"split": "test", "dataset": DATASET, "zeroshot": zeroshot, "pretraining": results})
    out: dict[str, Any] = {"teacher_gain": zeroshot[TEACHER_ARCH]["hm"] - zeroshot[STUDENT_ARCH]["hm"]}
    for arch in ARCHS:
        r, z = results[arch], zeroshot[arch]
        out[arch] = {
            "cached": bool(r["cached"]), "fingerprint": r["fingerprint"], "steps": r["steps"],
            "pretrain_seconds": round(float(r["seconds"]), 1), "clean_zeroshot": r["zeroshot"].get("clean"),
            "base": z["base"], "novel": z["novel"], "hm": z["hm"],
        }
    return out
