"""ImageNet and its domain-shifted test sets, in the CoOp folder layout.

ImageNet: ``<root>/imagenet/classnames.txt`` ("wnid class name" lines) and
``images/{train,val}/<wnid>/*``; labels follow the sorted wnids and, as in CoOp, the val images
serve as both val and test. The variants are test-only: ImageNet-V2 folders are numbered by label,
ImageNet-A/-R hold a 200-class subset (labels 0..199 over their sorted wnid folders) and
ImageNet-Sketch holds all 1000 wnid folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdpipe.data.items import DatasetSplits, Item
from kdpipe.data.layout import find_dataset_dir, finish, list_images, require_dir
from kdpipe.data.registry import register_dataset
from kdpipe.errors import KdpipeError

IMAGENET_LAYOUT = (
    "<data-root>/imagenet/ holding classnames.txt ('wnid class name' lines) and images/train/<wnid>/, "
    "images/val/<wnid>/, the CoOp layout"
)


def read_classnames(path: Path, name: str) -> dict[str, str]:
    """``wnid -> class name`` from CoOp's classnames.txt, in file order."""
    names: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"{name}: cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2:
            raise KdpipeError(f"{name}: {path}:{n}: expected 'wnid class name', got {line.strip()!r}")
        names[parts[0]] = parts[1].strip()
    if not names:
        raise KdpipeError(f"{name}: {path} lists no classes (expected 'wnid class name' lines)")
    return names


def _subfolders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _check_known(folders: list[str], classnames: dict[str, str], where: Path, name: str) -> None:
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise KdpipeError(
            f"{name}: class folder(s) {unknown[:3]} in {where} are not listed in classnames.txt"
        )


def _read_folder_split(split_dir: Path, wnids: list[str], classnames: dict[str, str]) -> list[Item]:
    items = []
    for label, wnid in enumerate(wnids):
        folder = split_dir / wnid
        if folder.is_dir():
            items.extend(Item(str(p), label, classnames[wnid]) for p in list_images(folder))
    return items


@register_dataset("imagenet", layout=IMAGENET_LAYOUT)
def read_imagenet(root: Path, strict: bool = False) -> DatasetSplits:
    folder = find_dataset_dir(root, "imagenet", "classnames.txt", "imagenet", IMAGENET_LAYOUT)
    classnames = read_classnames(folder / "classnames.txt", "imagenet")
    train_dir = require_dir(folder / "images" / "train", "imagenet", IMAGENET_LAYOUT)
    val_dir = require_dir(folder / "images" / "val", "imagenet", IMAGENET_LAYOUT)
    for split_dir in (train_dir, val_dir):
        _check_known(_subfolders(split_dir), classnames, split_dir, "imagenet")
    wnids = sorted(classnames)
    train = _read_folder_split(train_dir, wnids, classnames)
    test = _read_folder_split(val_dir, wnids, classnames)
    if not train:
        raise KdpipeError(f"imagenet: no images under {train_dir} (expected {IMAGENET_LAYOUT})")
    return finish(
        "imagenet",
        {"train": train, "val": test, "test": test},
        [classnames[w] for w in wnids],
        check_files=False,
        strict=strict,
    )


def _variant_layout(folder: str, image_dir: str, what: str) -> str:
    return f"<data-root>/{folder}/ holding {image_dir}/{what} and classnames.txt (copied from imagenet/), the CoOp layout"


def _read_wnid_variant(root: Path, name: str, folder: str, image_dir: str, strict: bool) -> DatasetSplits:
    layout = _variant_layout(folder, image_dir, "<wnid>/")
    base = find_dataset_dir(root, folder, "classnames.txt", name, layout)
    classnames = read_classnames(base / "classnames.txt", name)
    images = require_dir(base / image_dir, name, layout)
    wnids = _subfolders(images)
    _check_known(wnids, classnames, images, name)
    test = _read_folder_split(images, wnids, classnames)
    if not test:
        raise KdpipeError(f"{name}: no images under {images} (expected {layout})")
    return finish(name, {"test": test}, [classnames[w] for w in wnids], check_files=False, strict=strict)


V2_DIR = "imagenetv2-matched-frequency-format-val"


@register_dataset(
    "imagenet_v2", layout=_variant_layout("imagenetv2", V2_DIR, "<0..999>/"), kind="domain-generalisation",
    aliases=("imagenetv2",),
)
def read_imagenet_v2(root: Path, strict: bool = False) -> DatasetSplits:
    layout = _variant_layout("imagenetv2", V2_DIR, "<0..999>/")
    base = find_dataset_dir(root, "imagenetv2", "classnames.txt", "imagenet_v2", layout)
    classnames = list(read_classnames(base / "classnames.txt", "imagenet_v2").values())
    images = require_dir(base / V2_DIR, "imagenet_v2", layout)
    test = []
    for label, classname in enumerate(classnames):
        folder = images / str(label)
        if folder.is_dir():
            test.extend(Item(str(p), label, classname) for p in list_images(folder))
    if not test:
        raise KdpipeError(f"imagenet_v2: no images under {images}/<label>/ (expected {layout})")
    return finish("imagenet_v2", {"test": test}, classnames, check_files=False, strict=strict)


@register_dataset(
    "imagenet_sketch", layout=_variant_layout("imagenet-sketch", "images", "<wnid>/"), kind="domain-generalisation"
)
def read_imagenet_sketch(root: Path, strict: bool = False) -> DatasetSplits:
    return _read_wnid_variant(root, "imagenet_sketch", "imagenet-sketch", "images", strict)


@register_dataset(
    "imagenet_a", layout=_variant_layout("imagenet-adversarial", "imagenet-a", "<wnid>/"), kind="domain-generalisation"
)
def read_imagenet_a(root: Path, strict: bool = False) -> DatasetSplits:
    return _read_wnid_variant(root, "imagenet_a", "imagenet-adversarial", "imagenet-a", strict)


@register_dataset(
    "imagenet_r", layout=_variant_layout("imagenet-rendition", "imagenet-r", "<wnid>/"), kind="domain-generalisation"
)
def read_imagenet_r(root: Path, strict: bool = False) -> DatasetSplits:
    return _read_wnid_variant(root, "imagenet_r", "imagenet-rendition", "imagenet-r", strict)
