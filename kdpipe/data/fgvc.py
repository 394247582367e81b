"""FGVC Aircraft (variant level) in the CoOp layout: ``variants.txt`` orders the 100 classes and
``images_variant_{train,val,test}.txt`` hold "image_id variant name" lines for ``images/<id>.jpg``."""

from __future__ import annotations

import os
from pathlib import Path

from kdpipe.data.items import DatasetSplits, Item
from kdpipe.data.layout import find_dataset_dir, finish
from kdpipe.data.registry import register_dataset
from kdpipe.errors import KdpipeError

LAYOUT = (
    "<data-root>/fgvc_aircraft/ holding images/, variants.txt and images_variant_{train,val,test}.txt, "
    "the CoOp layout"
)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise KdpipeError(f"fgvc_aircraft: {path} not found (expected {LAYOUT})")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"fgvc_aircraft: cannot read {path}: {e}") from None


def _read_split(folder: Path, split: str, label_of: dict[str, int]) -> list[Item]:
    path = folder / f"images_variant_{split}.txt"
    items = []
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise KdpipeError(f"fgvc_aircraft: {path}:{n}: expected 'image_id variant', got {line!r}")
        image_id, variant = parts
        if variant not in label_of:
            raise KdpipeError(f"fgvc_aircraft: {path}:{n}: variant {variant!r} is not in variants.txt")
        items.append(Item(os.path.abspath(folder / "images" / f"{image_id}.jpg"), label_of[variant], variant))
    return items


@register_dataset("fgvc_aircraft", layout=LAYOUT, aliases=("fgvc", "aircraft", "fgvcaircraft"))
def read_fgvc_aircraft(root: Path, strict: bool = False, check_files: bool = True) -> DatasetSplits:
    folder = find_dataset_dir(root, "fgvc_aircraft", "variants.txt", "fgvc_aircraft", LAYOUT)
    classnames = _read_lines(folder / "variants.txt")
    label_of = {name: i for i, name in enumerate(classnames)}
    splits = {s: _read_split(folder, s, label_of) for s in ("train", "val", "test")}
    return finish("fgvc_aircraft", splits, classnames, check_files=check_files, strict=strict, layout=LAYOUT)
