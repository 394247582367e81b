"""Supervised few-shot prompt learning: any registered method, trained by :func:`fit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from kdpipe.train.batches import EpochBatches
from kdpipe.train.loop import fit
from kdpipe.train.schedule import OptimConfig


def train_method(
    method,
    train_items: Sequence[Any] | Dataset,
    *,
    ckpt_dir: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    amp: bool = True,
    workers: int = 0,
    checkpoint_every: int = 0,
    transform: Callable | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``method`` on labelled items (``kdpipe.data.Item``) or a ready dataset of (image, label).

    ``epochs``/``batch_size``/``lr`` default to the method's config (the reference values). Items
    are read through ``kdpipe.data.ImageDataset`` with the train augmentation of the backbone's
    image size, seeded per (seed, epoch, index). A method with nothing to learn (zero-shot) returns
    an empty history without touching the data. The last epoch's prompts are kept (after PromptSRC's
    aggregation): checkpoints are never selected on evaluation data.
    """
    cfg = method.cfg
    if method.num_learned() == 0:
        return []
    epochs = cfg.epochs if epochs is None else epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    optim = OptimConfig.from_method_config(cfg)
    if lr is not None:
        optim.lr = lr
    dataset = train_items if isinstance(train_items, Dataset) else _image_dataset(method, list(train_items), transform, seed)
    batches = EpochBatches(dataset, batch_size, seed=seed, workers=workers)

    def step(batch):
        images, labels = batch[0], batch[1]
        return method.loss(images, labels)

    return fit(
        method,
        method.learned_parameters(),
        epochs,
        batches,
        step,
        optim,
        ckpt_dir=ckpt_dir,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
        amp=amp,
        progress=progress,
    )


def _image_dataset(method, items: list, transform: Callable | None, seed: int) -> Dataset:
    from kdpipe.data import ImageDataset
    from kdpipe.data.transforms import build_transform

    bb = method.backbone
    if transform is None:
        transform = build_transform(True, bb.dims.image_size, bb.mean, bb.std)
    return ImageDataset(items, transform, seed=seed)
