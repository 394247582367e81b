"""Datasets described by a CoOp-style split file: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

Folder and file names follow CoOp/Dassl, so an existing ``$DATA`` tree works unchanged. Class names
go through the same fixes CoOp applies (its split generators rename a few Caltech101 and EuroSAT
folders; its prompt learner turns "_" into spaces); they are idempotent on the published files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.data.items import DatasetSplits, Item
from kdpipe.data.layout import find_dataset_dir, finish, prompt_name
from kdpipe.data.registry import register_dataset
from kdpipe.errors import KdpipeError

SPLITS = ("train", "val", "test")

CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class JsonSplitLayout:
    name: str
    folder: str  # under the data root
    split_file: str  # inside the folder
    image_dir: str  # inside the folder; relpaths in the split file are relative to it ("" = the folder)
    renames: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        images = f"{self.image_dir}/" if self.image_dir else "the images"
        return f"<data-root>/{self.folder}/ holding {images} and {self.split_file}, the CoOp layout"


def read_split_file(path: Path, name: str) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KdpipeError(f"{name}: cannot read split file {path}: {e}") from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise KdpipeError(f"{name}: {path} is not a split file (expected an object with train/val/test lists)")
    return data


def _parse_entries(entries, split: str, image_dir: Path, layout: JsonSplitLayout, path: Path) -> list[Item]:
    if not isinstance(entries, list):
        raise KdpipeError(f"{layout.name}: {path}: '{split}' must be a list of [relpath, label, classname]")
    items = []
    for n, entry in enumerate(entries):
        try:
            relpath, label, classname = entry
            label = int(label)
            if not isinstance(relpath, str) or not isinstance(classname, str) or label < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise KdpipeError(
                f"{layout.name}: {path}: {split}[{n}] = {entry!r} is not [relpath, label >= 0, classname]"
            ) from None
        classname = prompt_name(layout.renames.get(classname, classname))
        items.append(Item(str(image_dir / relpath), label, classname))
    return items


def classnames_from_items(splits: dict[str, list[Item]], name: str, source: Path | str) -> list[str]:
    """Ordered class names from (label, classname) pairs; labels must cover 0..n-1."""
    by_label: dict[int, str] = {}
    for split in SPLITS:
        for item in splits.get(split, []):
            by_label.setdefault(item.label, item.classname)
    if not by_label:
        return []
    n = max(by_label) + 1
    missing = [i for i in range(n) if i not in by_label]
    if missing:
        raise KdpipeError(
            f"{name}: labels in {source} must cover 0..{n - 1}; label(s) {missing[:5]} never appear"
        )
    return [by_label[i] for i in range(n)]


def read_json_split(root: Path, layout: JsonSplitLayout, *, strict: bool = False, check_files: bool = True) -> DatasetSplits:
    folder = find_dataset_dir(root, layout.folder, layout.split_file, layout.name, layout.describe())
    split_path = folder / layout.split_file
    data = read_split_file(split_path, layout.name)
    image_dir = (folder / layout.image_dir) if layout.image_dir else folder
    splits = {s: _parse_entries(data.get(s, []), s, Path(os.path.abspath(image_dir)), layout, split_path) for s in SPLITS}
    classnames = classnames_from_items(splits, layout.name, split_path)
    return finish(
        layout.name, splits, classnames, check_files=check_files, strict=strict, layout=layout.describe()
    )


LAYOUTS = [
    JsonSplitLayout("caltech101", "caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories", CALTECH_NAMES),
    JsonSplitLayout("oxford_pets", "oxford_pets", "split_zhou_OxfordPets.json", "images"),
    JsonSplitLayout("stanford_cars", "stanford_cars", "split_zhou_StanfordCars.json", ""),
    JsonSplitLayout("oxford_flowers", "oxford_flowers", "split_zhou_OxfordFlowers.json", "jpg"),
    JsonSplitLayout("food101", "food-101", "split_zhou_Food101.json", "images"),
    JsonSplitLayout("sun397", "sun397", "split_zhou_SUN397.json", "SUN397"),
    JsonSplitLayout("dtd", "dtd", "split_zhou_DescribableTextures.json", "images"),
    JsonSplitLayout("eurosat", "eurosat", "split_zhou_EuroSAT.json", "2750", EUROSAT_NAMES),
    JsonSplitLayout("ucf101", "ucf101", "split_zhou_UCF101.json", "UCF-101-midframes"),
]
WORLD_LAYOUT = JsonSplitLayout("world", "world", "split_world.json", "images")

_ALIASES = {
    "caltech101": ("caltech-101", "caltech"),
    "oxford_pets": ("pets", "oxfordpets"),
    "stanford_cars": ("cars", "stanfordcars"),
    "oxford_flowers": ("flowers", "flowers102", "oxfordflowers"),
    "food101": ("food-101", "food"),
    "sun397": (),
    "dtd": ("describabletextures",),
    "eurosat": (),
    "ucf101": (),
}


def _make_reader(layout: JsonSplitLayout):
    def reader(root: Path, strict: bool = False, check_files: bool = True) -> DatasetSplits:
        return read_json_split(root, layout, strict=strict, check_files=check_files)

    reader.__name__ = f"read_{layout.name}"
    reader.__doc__ = f"{layout.name}: {layout.describe()}."
    return reader


for _layout in LAYOUTS:
    register_dataset(_layout.name, layout=_layout.describe(), aliases=_ALIASES[_layout.name])(_make_reader(_layout))

register_dataset(
    "world",
    layout="<data-root>/world/ holding images/ and split_world.json (written by the demo world)",
    kind="demo",
)(_make_reader(WORLD_LAYOUT))
