"""What the stages read besides their config: upstream folders, the dataset (splits, identity,
few-shot cache), the device and the training transform.

Trained methods are written and read by :mod:`kdpipe.methods.io` (``save_method`` / ``load_method``),
where :mod:`kdpipe.infer` reads them too; their file names are in :mod:`kdpipe.artefacts.run_layout`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError


def upstream(ctx, stage: str) -> Path:
    """The folder of the one instance of ``stage`` (a seeded stage: the one with this seed) feeding ``ctx``."""
    found = {Path(p) for p in ctx.inputs_of(stage).values()}
    if len(found) != 1:
        raise KdpipeError(f"stage {ctx.name} expected one {stage} input, found {len(found)}: {', '.join(sorted(map(str, found)))}")
    return found.pop()


def data_identity(cfg) -> dict[str, Any]:
    """What a dataset-reading stage's result depends on besides config: the exact items and labels."""
    return _cached_identity(cfg["data"].dataset, data_root(cfg))


def source_identity(cfg) -> dict[str, Any]:
    """:func:`data_identity` of the dataset few-shot training reads (``data.source`` or ``data.dataset``).

    Its name is part of it, so the teacher and baselines re-train when that dataset changes, and
    not when only the target changes in cross-dataset mode (an ImageNet teacher is costly).
    """
    return _cached_identity(cfg["data"].train_dataset, data_root(cfg))


def _cached_identity(dataset: str, root: Path) -> dict[str, Any]:
    # Every stage instance asks while a run is planned; reading a big dataset once per plan is
    # enough. The folder times in the key make an edited data root (files added, removed or
    # replaced) read afresh within a long-lived process.
    root = root.resolve()
    try:
        stamp = (root.stat().st_mtime_ns,) + tuple(
            sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(root) if e.is_dir())
        )
    except OSError:
        stamp = ()
    return _data_identity(dataset, str(root), stamp)


@functools.lru_cache(maxsize=8)
def _data_identity(dataset: str, root: str, stamp: tuple) -> dict[str, Any]:
    import hashlib

    from kdpipe.data import load_dataset

    splits = load_dataset(dataset, root)
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        for item in getattr(splits, name):
            h.update(f"{name}\t{os.path.relpath(item.path, root)}\t{item.label}\n".encode())
    h.update("\n".join(splits.classnames).encode())
    # the root itself is left out: moving the data elsewhere does not make results stale
    return {"dataset": dataset, "items": h.hexdigest()}


def fewshot_cache(ctx) -> Path:
    return Path(ctx.run_dir) / "cache" / "few-shot"


def device_of(cfg) -> "Any":
    from kdpipe.train.device import pick_device

    return pick_device(cfg["run"].device)


def data_root(cfg) -> Path:
    return Path(os.path.expanduser(cfg["data"].root))


def load_splits(cfg, source: bool = False):
    """Every class of ``data.dataset`` (labels sorted, base first), or of the few-shot training
    dataset (``data.source``, when set) with ``source=True``."""
    from kdpipe.data import load_dataset

    d = cfg["data"]
    return load_dataset(d.train_dataset if source else d.dataset, data_root(cfg))


def train_transform(cfg, backbone):
    """The training augmentation at ``backbone``'s resolution with ``data.crop_scale``."""
    from kdpipe.data.transforms import transform_for

    scale = tuple(cfg["data"].crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise KdpipeError(f"data.crop_scale must be two area fractions 0 < low <= high <= 1, got {list(scale)}")
    return transform_for(backbone, True, scale=scale)
