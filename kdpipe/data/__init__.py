"""Datasets (CoOp benchmarks, ImageNet variants, custom folders/lists, the demo world), base/novel
and few-shot splits, transforms, and webdataset shards.

Importing the package registers every reader; torch-dependent pieces (``ImageDataset``,
``build_transform``) load on first use so ``kdpipe --help`` stays quick.
"""

from kdpipe.data import coop_json, custom, fgvc, imagenet  # noqa: F401  (fill the registry)
from kdpipe.data.items import DatasetSplits, Item
from kdpipe.data.registry import dataset_entries, get_dataset, list_datasets, load_dataset, register_dataset
from kdpipe.data.splits import base_novel_labels, few_shot, subsample

_LAZY = {
    "ImageDataset": ("kdpipe.data.images", "ImageDataset"),
    "load_rgb": ("kdpipe.data.images", "load_rgb"),
    "build_transform": ("kdpipe.data.transforms", "build_transform"),
    "transform_for": ("kdpipe.data.transforms", "transform_for"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kdpipe.data' has no attribute {name!r}")


__all__ = [
    "DatasetSplits",
    "Item",
    "base_novel_labels",
    "dataset_entries",
    "few_shot",
    "get_dataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "subsample",
    *_LAZY,
]
