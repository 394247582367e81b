"""Write the shifted downstream world as a json-split dataset (the CoOp ``split_*.json`` layout).

Layout under ``<root>/world/``::

    split_world.json   {"train"|"val"|"test": [[relpath, label, classname], ...]}
    world_meta.json    what produced it (seed, images per class, shift, render version)
    images/<split>/<class_name>/<index>.png

so ``--dataset world --data-root <root>`` goes through the same loader, base/novel, few-shot,
shards and evaluation code as the benchmark datasets. Writing is idempotent (same arguments: the
existing folder is kept) and atomic (built in a temporary sibling folder, then renamed into place).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from kdpipe.errors import KdpipeError
from kdpipe.io import current_umask, read_json_or_none, replace_dir, write_json
from kdpipe.progress import Progress
from kdpipe.world.classes import CLASSNAMES, NUM_CLASSES
from kdpipe.world.render import IMAGE_SIZE, RENDER_VERSION, render_batch
from kdpipe.world.shift import DEFAULT_SHIFT, Shift, shift_images

SPLITS = ("train", "val", "test")
SPLIT_FILE = "split_world.json"
META_FILE = "world_meta.json"
DEFAULT_PER_CLASS: dict[str, int] = {"train": 100, "val": 50, "test": 50}
# Separates the downstream renders' random streams from pretraining's (same seed, other images).
_DOWNSTREAM_STREAM = 0x5EED_D0
_WRITE_CHUNK = 1024


def _per_class(per_class: int | Mapping[str, int] | None) -> dict[str, int]:
    if per_class is None:
        return dict(DEFAULT_PER_CLASS)
    if isinstance(per_class, int):
        counts = {s: per_class for s in SPLITS}
    else:
        unknown = set(per_class) - set(SPLITS)
        if unknown:
            raise KdpipeError(f"per_class has unknown split(s) {sorted(unknown)}; expected keys among {list(SPLITS)}")
        counts = {s: int(per_class.get(s, DEFAULT_PER_CLASS[s])) for s in SPLITS}
    bad = {s: n for s, n in counts.items() if n < 1}
    if bad:
        raise KdpipeError(f"per_class must be at least 1 image per class in every split, got {bad}")
    return counts


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DOWNSTREAM_STREAM, SPLITS.index(split)]))


def _folder_name(classname: str) -> str:
    return classname.replace(" ", "_")


def world_meta(seed: int, per_class: int | Mapping[str, int] | None = None, shift: Shift = DEFAULT_SHIFT) -> dict:
    """Everything that determines the dataset's bytes; equal meta means an identical dataset."""
    return {
        "render_version": RENDER_VERSION,
        "seed": int(seed),
        "per_class": _per_class(per_class),
        "image_size": IMAGE_SIZE,
        "shift": shift.describe(),
        "classnames": list(CLASSNAMES),
    }


def _write_split(folder: Path, split: str, count: int, seed: int, shift: Shift, advance) -> list[list]:
    from PIL import Image

    rng = _split_rng(seed, split)
    labels = np.repeat(np.arange(NUM_CLASSES), count)
    for name in CLASSNAMES:
        (folder / "images" / split / _folder_name(name)).mkdir(parents=True, exist_ok=True)
    rows: list[list] = []
    for start in range(0, len(labels), _WRITE_CHUNK):
        part = labels[start : start + _WRITE_CHUNK]
        images = shift_images(render_batch(part, rng).images, rng, shift)
        for offset, (label, img) in enumerate(zip(part, images)):
            index = (start + offset) % count
            name = CLASSNAMES[label]
            rel = f"{split}/{_folder_name(name)}/{index:04d}.png"
            Image.fromarray(img).save(folder / "images" / rel, compress_level=1)
            rows.append([rel, int(label), name])
        advance(len(part))
    return rows


def write_world_dataset(
    root: str | Path,
    seed: int = 0,
    per_class: int | Mapping[str, int] | None = None,
    shift: Shift = DEFAULT_SHIFT,
    progress: bool = False,
) -> Path:
    """Render the shifted downstream world into ``<root>/world`` and return that folder.

    ``per_class``: images per class, one int for every split or a mapping by split (missing splits
    keep the defaults {train: 100, val: 50, test: 50}). ``progress``: show how rendering goes (a
    bar on a terminal, plain lines otherwise).
    """
    root = Path(root).expanduser()
    target = root / "world"
    meta = world_meta(seed, per_class, shift)
    if target.exists():
        existing = _read_meta(target)
        if existing == meta and (target / SPLIT_FILE).is_file():
            return target
        if existing is None:
            raise KdpipeError(
                f"{target} exists but was not written by kdpipe (no {META_FILE}); "
                "pick another --data-root or move that folder away"
            )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world.tmp-", dir=root))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp is private (0700); the world is shared data
    try:
        total = sum(meta["per_class"].values()) * NUM_CLASSES
        with Progress(total, "render the demo world", unit="image", quiet=not progress) as bar:
            split_rows = {s: _write_split(tmp, s, meta["per_class"][s], seed, shift, bar.update) for s in SPLITS}
        write_json(tmp / SPLIT_FILE, split_rows)
        write_json(tmp / META_FILE, meta)
        replace_dir(tmp, target)  # a kdpipe world with other settings is replaced whole
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_meta(folder: Path) -> dict | None:
    data = read_json_or_none(folder / META_FILE)
    return data if isinstance(data, dict) else None
