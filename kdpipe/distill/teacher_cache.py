"""Teacher image features computed once per augmented view and looked up during distillation.

The reference runs the large teacher's image tower on every step of every epoch, of every
distillation run. With a cache of V views, epoch ``e`` trains on view ``e % V`` of every image: the
shard stream replays that view's augmentation (it is seeded per (seed, epoch, key), independent of
workers and batching), and the teacher's features for it are read from the cache instead of
computed. Changing the student, the learning rate or the loss weight then reuses the cache.

Trade-off, stated where it is chosen (``distill.cache_views``): with V < epochs both the views and
the shard order repeat every V epochs; features are stored in fp16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from kdpipe.artefacts.teacher_cache import read_teacher_cache
from kdpipe.errors import KdpipeError


def member_ids(urls: Sequence[str], keys: Sequence[str], root: str | Path) -> list[tuple[str, str]]:
    """The cache's identity of each image: (shard, key). A key alone repeats across shard sets (every
    ``kdpipe shards write`` set starts at ``00000000``). A shard under ``root`` (the shards stage's
    train location) is named relative to it, so built shards keep their identity when the run dir moves."""
    prefix = str(root).rstrip("/") + "/"
    return [(u[len(prefix):] if u.startswith(prefix) else u, k) for u, k in zip(urls, keys)]


class CachedTeacher:
    """A :class:`~kdpipe.distill.TeacherFeatures` source reading ``[V, N, D]`` stored features.

    ``view`` selects which augmented view the current epoch trains on (set by the caller). Rows are
    looked up by whatever identity ``keys`` holds: :func:`member_ids` pairs for a stored cache.
    """

    def __init__(self, features: torch.Tensor, keys: Sequence[str], device: str | torch.device = "cpu"):
        if features.dim() != 3 or features.shape[1] != len(keys):
            raise KdpipeError(f"teacher cache holds {tuple(features.shape)} features for {len(keys)} keys; re-run teacher-cache")
        self.features = features  # stays on the CPU: it can be large
        self.index = {k: i for i, k in enumerate(keys)}
        self.device = torch.device(device)
        self.view = 0

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "CachedTeacher":
        features, members = read_teacher_cache(folder)
        return cls(features, members, device)

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        try:
            rows = torch.tensor([self.index[k] for k in keys])
        except KeyError as e:
            raise KdpipeError(f"image {e.args[0]!r} is not in the teacher cache; the shards changed since it was built (re-run teacher-cache)") from None
        feats = self.features[self.view % self.views].index_select(0, rows)
        return feats.to(self.device, torch.float32, non_blocking=True)
