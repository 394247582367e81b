"""Few-shot supervised training of any registered method: what the teacher and baselines share.

Both train on K labelled images per training class (base classes in base-to-novel mode, every
class in cross-dataset mode), drawn by a seeded sampler, with the method's reference settings
unless the config overrides them, and keep the last epoch (never selected on test data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdpipe.stages import common


def train_splits(cfg, seed: int, cache_dir: Path | None = None):
    """The K-shot training split for ``seed`` (relabelled 0..k-1 over the training classes)."""
    from kdpipe.data import few_shot, subsample

    splits = common.load_splits(cfg, source=True)
    part = subsample(splits, cfg["data"].train_subset)
    return few_shot(part, cfg["data"].shots, seed, cache_dir=cache_dir)


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
    from kdpipe.train import train_method

    cfg = ctx.cfg
    device = common.device_of(cfg)
    data = train_splits(cfg, seed, common.fewshot_cache(ctx))
    backbone = load_backbone(backbone_spec, device=device)
    torch.manual_seed(seed)  # prompt initialisation is part of the seeded result
    method = build_method(method_name, backbone, data.classnames, overrides=overrides, dataset=cfg["data"].train_dataset)
    method.to(device)
    ctx.log.info(
        f"{role} {method_name} on {backbone_spec}, seed {seed}: {len(data.train)} images of "
        f"{len(data.classnames)} classes ({cfg['data'].shots}-shot), {method.num_learned():,} learned parameters"
    )
    epochs, bs = method.cfg.epochs, method.cfg.batch_size
    steps = max(1, len(data.train) // bs) if method.num_learned() else 0
    with ctx.progress(epochs * steps, desc=f"{role} {method_name}", initial=common.resumed_step(ctx.ckpt_dir)) as bar:
        history = train_method(
            method,
            data.train,
            ckpt_dir=ctx.ckpt_dir,
            seed=seed,
            device=device,
            amp=cfg["run"].amp,
            workers=cfg["data"].workers,
            transform=common.train_transform(cfg, backbone),
            checkpoint_every=checkpoint_every,
            progress=common.step_reporter(bar, epochs, lambda: min(bs, len(data.train))),
        )
    if ctx.rank == 0:  # under torchrun every rank holds the same averaged result
        common.save_method(
            method,
            out_stem,
            role=role,
            seed=seed,
            shots=cfg["data"].shots,
            train_images=len(data.train),
            history=history,
        )
    last = history[-1] if history else {}
    return {"learned": method.num_learned(), "train_loss": last.get("loss"), "epochs": len(history)}
