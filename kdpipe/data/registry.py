"""Dataset names -> reader functions, filled by ``@register_dataset`` in the reader modules."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdpipe.data.items import DatasetSplits
from kdpipe.errors import KdpipeError

Reader = Callable[..., DatasetSplits]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    reader: Reader
    layout: str  # what the reader expects on disk, shown by `kdpipe datasets` and in errors
    kind: str  # "benchmark", "domain-generalisation", "custom" or "demo"


_REGISTRY: dict[str, DatasetEntry] = {}
_ALIASES: dict[str, str] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_dataset(name: str, *, layout: str, kind: str = "benchmark", aliases: tuple[str, ...] = ()):
    """Register ``reader(root: Path, **opts) -> DatasetSplits`` under ``name`` (and ``aliases``)."""

    def wrap(reader: Reader) -> Reader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetEntry(name, reader, layout, kind)
        for alias in aliases:
            _ALIASES[_normalise(alias)] = name
        return reader

    return wrap


def _ensure_readers_imported() -> None:
    # Importing the package imports every reader module; this covers callers that imported
    # kdpipe.data.registry directly.
    import kdpipe.data  # noqa: F401


def get_dataset(name: str) -> DatasetEntry:
    _ensure_readers_imported()
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise KdpipeError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _REGISTRY[key]


def list_datasets() -> list[str]:
    _ensure_readers_imported()
    return sorted(_REGISTRY)


def dataset_entries() -> list[DatasetEntry]:
    _ensure_readers_imported()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def load_dataset(name: str, root: str | Path, **opts) -> DatasetSplits:
    """Read dataset ``name`` from ``root``.

    For benchmarks ``root`` is the data root holding the CoOp folders (``<root>/oxford_pets/...``);
    the dataset's own folder is accepted too. For ``imagefolder``, ``csv`` and ``jsonl`` it is the
    folder or list file itself. Common options: ``strict=True`` turns skipped entries (images named
    by a split file but missing on disk) into an error. Custom sources also take ``classnames``
    (a file mapping labels to prompt names), ``seed`` and ``val_frac``/``test_frac``.
    """
    entry = get_dataset(name)
    accepted = inspect.signature(entry.reader).parameters
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        takes = ", ".join(p for p in accepted if p != "root") or "no options"
        raise KdpipeError(f"dataset {entry.name} does not take option(s) {', '.join(unknown)}; it takes {takes}")
    root = Path(root).expanduser()
    return entry.reader(root, **opts)
