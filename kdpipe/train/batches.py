"""Deterministic per-epoch batches over a map-style dataset, resumable mid-epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdpipe.dist import worker_init


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


class EpochBatches:
    """``batches(epoch, skip)`` for :func:`kdpipe.train.fit`.

    The order of each epoch is a permutation seeded by (seed, epoch), independent of the global RNG,
    so skipping the first ``skip`` batches after a resume gives exactly the batches an uninterrupted
    run trains on next. Datasets with ``set_epoch`` (kdpipe's ImageDataset) seed their augmentation
    per (seed, epoch, index), so worker count and resuming do not change the images either.
    Like Dassl, the last partial batch is dropped when the dataset holds at least one full batch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, workers: int = 0, shuffle: bool = True):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self.shuffle = shuffle
        n = len(dataset)
        self.drop_last = n >= batch_size
        self.num_batches = n // batch_size if self.drop_last else (1 if n else 0)

    def __len__(self) -> int:
        return self.num_batches

    def indices(self, epoch: int) -> list[list[int]]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch))).tolist()
        else:
            order = list(range(n))
        bs = self.batch_size
        return [order[i * bs : (i + 1) * bs] for i in range(self.num_batches)]

    def __call__(self, epoch: int, skip: int = 0) -> Any:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return DataLoader(
            self.dataset,
            batch_sampler=self.indices(epoch)[skip:],
            num_workers=self.workers,
            worker_init_fn=worker_init if self.workers else None,
            # the loader's own seed comes from this generator, never from the global RNG
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)),
            pin_memory=torch.cuda.is_available(),
        )
