"""Shared checks for readers: find the dataset folder, drop missing files, finish the splits."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kdpipe.data.items import DatasetSplits, Item
from kdpipe.errors import KdpipeError

log = logging.getLogger("kdpipe.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def find_dataset_dir(root: Path, folder: str, marker: str, name: str, layout: str) -> Path:
    """Return the folder holding ``marker``: ``<root>/<folder>`` (a data root) or ``root`` itself.

    Accepting both lets users point at either their data root (as CoOp does) or the dataset folder.
    """
    for candidate in (root / folder, root):
        if (candidate / marker).exists():
            return candidate
    if not root.exists():
        raise KdpipeError(f"{name}: data root {root} does not exist (expected {layout})")
    raise KdpipeError(f"{name}: {root / folder / marker} not found (expected {layout})")


def require_dir(path: Path, name: str, layout: str) -> Path:
    if not path.is_dir():
        raise KdpipeError(f"{name}: folder {path} not found (expected {layout})")
    return path


def prompt_name(raw: str) -> str:
    """Folder-style class names become prompt text, as CoOp's prompt learner does ("_" -> " ")."""
    return " ".join(raw.replace("_", " ").split())


def is_image(path: str | Path) -> bool:
    name = os.path.basename(str(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files ignored)."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and is_image(e.name))


def list_images_recursive(folder: Path) -> list[Path]:
    """Every image under ``folder``, sorted by relative path so shard contents are reproducible."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if is_image(f))
    return sorted(found)


def drop_missing(items: list[Item], skipped: list[tuple[str, str]]) -> list[Item]:
    kept = []
    for item in items:
        if os.path.isfile(item.path):
            kept.append(item)
        else:
            skipped.append((item.path, "file not found"))
    return kept


def finish(
    name: str,
    splits: dict[str, list[Item]],
    classnames: list[str],
    *,
    check_files: bool = True,
    strict: bool = False,
    layout: str = "",
    skipped: list[tuple[str, str]] | None = None,
) -> DatasetSplits:
    """Drop entries whose file is missing (or fail with ``strict``) and build the DatasetSplits."""
    skipped = list(skipped or [])
    total = sum(len(v) for v in splits.values())
    if check_files:
        splits = {k: drop_missing(v, skipped) for k, v in splits.items()}
    if skipped and strict:
        path, reason = skipped[0]
        raise KdpipeError(f"{name}: {len(skipped)} entries unusable, e.g. {path} ({reason}); fix them or drop strict")
    kept = sum(len(v) for v in splits.values())
    if total and not kept:
        example = skipped[0][0] if skipped else "?"
        raise KdpipeError(f"{name}: none of the {total} images exist, e.g. {example} (expected {layout})")
    if skipped:
        log.warning("%s: skipped %d of %d entries, e.g. %s (%s)", name, len(skipped), total, *skipped[0])
    return DatasetSplits(
        train=splits.get("train", []),
        val=splits.get("val", []),
        test=splits.get("test", []),
        classnames=list(classnames),
        name=name,
        skipped=skipped,
    )
