"""Few-shot supervised training of any registered method: what the teacher and baselines share.

Both train on K labelled images per training class (base classes in base-to-novel mode, every
class in cross-dataset mode), drawn by a seeded sampler, with the method's reference settings
unless the config overrides them, and keep the last epoch (never selected on test data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdpipe.eval.labels import backbone_label
from kdpipe.progress import step_reporter
from kdpipe.settings import inputs
from kdpipe.train.checkpoint import resumed_step


def train_splits(cfg, seed: int, cache_dir: Path | None = None):
    """The K-shot training split for ``seed`` (relabelled 0..k-1 over the training classes)."""
    from kdpipe.data import few_shot, subsample

    splits = inputs.load_splits(cfg, source=True)
    part = subsample(splits, cfg["data"].train_subset)
    return few_shot(part, cfg["data"].shots, seed, cache_dir=cache_dir)


def shot_counts(items, num_classes: int, requested: int) -> dict[str, Any]:
    """What the K-shot split really holds: classes short of ``requested`` images train on fewer."""
    from collections import Counter

    per_class = Counter(item.label for item in items)
    counts = [per_class.get(c, 0) for c in range(num_classes)]
    short = sum(1 for n in counts if requested > 0 and n < requested)
    return {
        "shots_requested": requested,
        "shots_min": min(counts, default=0),
        "shots_max": max(counts, default=0),
        "classes_short": short,
    }


def shots_warning(facts: dict[str, Any], num_classes: int) -> str | None:
    """One line when some classes have fewer training images than ``data.shots`` asks for."""
    if not facts["classes_short"]:
        return None
    lo, hi = facts["shots_min"], facts["shots_max"]
    have = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return (
        f"data.shots = {facts['shots_requested']} but {facts['classes_short']} of {num_classes} classes have fewer "
        f"training images: training on {have} per class"
    )


def train_fewshot(
    ctx,
    *,
    method_name: str,
    backbone_spec: str,
    overrides: dict[str, Any],
    seed: int,
    out_stem: Path,
    role: str,
    checkpoint_every: int = 0,
) -> dict[str, Any]:
    """Build, train and save one method; returns facts for the stage's metrics."""
    import torch

    from kdpipe.clip import load_backbone
    from kdpipe.methods import build_method
    from kdpipe.methods.io import save_method
    from kdpipe.train import train_method

    cfg = ctx.cfg
    device = inputs.device_of(cfg)
    data = train_splits(cfg, seed, inputs.fewshot_cache(ctx))
    backbone = load_backbone(backbone_spec, device=device)
    torch.manual_seed(seed)  # prompt initialisation is part of the seeded result
    method = build_method(method_name, backbone, data.classnames, overrides=overrides, dataset=cfg["data"].train_dataset)
    method.to(device)
    shots = shot_counts(data.train, len(data.classnames), cfg["data"].shots)
    short = shots_warning(shots, len(data.classnames))
    if short:
        ctx.log.warning(short)
    real = shots["shots_min"] if shots["shots_min"] == shots["shots_max"] else f"{shots['shots_min']}-{shots['shots_max']}"
    ctx.log.info(
        f"{role} {method_name} on {backbone_label(backbone_spec)}, seed {seed}: {len(data.train)} images of "
        f"{len(data.classnames)} classes ({real}-shot), {method.num_learned():,} learned parameters"
    )
    epochs, bs = method.cfg.epochs, method.cfg.batch_size
    steps = max(1, len(data.train) // bs) if method.num_learned() else 0
    with ctx.progress(epochs * steps, desc=f"{role} {method_name}", initial=resumed_step(ctx.ckpt_dir)) as bar:
        history = train_method(
            method,
            data.train,
            ckpt_dir=ctx.ckpt_dir,
            seed=seed,
            device=device,
            amp=cfg["run"].amp,
            workers=cfg["data"].workers,
            transform=inputs.train_transform(cfg, backbone),
            checkpoint_every=checkpoint_every,
            progress=step_reporter(bar, epochs, lambda: min(bs, len(data.train))),
        )
    if ctx.rank == 0:  # under torchrun every rank holds the same averaged result
        save_method(
            method,
            out_stem,
            role=role,
            seed=seed,
            shots=shots["shots_min"],  # the real K: the fewest images any class had
            shots_max=shots["shots_max"],
            shots_requested=shots["shots_requested"],
            train_images=len(data.train),
            history=history,
        )
    last = history[-1] if history else {}
    return {"learned": method.num_learned(), "train_loss": last.get("loss"), "epochs": len(history), **shots}


def stage_metrics(facts: dict[str, Any]) -> dict[str, Any]:
    """The manifest metrics of a few-shot stage (teacher, baseline), the real shot count included."""
    return {
        "train_loss": facts["train_loss"], "learned_parameters": facts["learned"], "epochs": facts["epochs"],
        "shots": facts["shots_min"], "shots_requested": facts["shots_requested"],
    }
