"""The data most users have: an ImageFolder tree, or a CSV/JSONL list of (path, label[, split]).

Class names for prompts come from the folder names or string labels ("_" -> " "), or from an
optional class-name file (``classnames=FILE``): JSON ``{key: name}`` or ``[name, ...]`` (index =
key), or text lines ``KEY class name`` as in ImageNet's classnames.txt. KEY is the folder name or
the label as written in the list. When no split is given, each class is split with a seeded
shuffle into train/val/test (50/20/30 by default, as CoOp splits datasets that ship without one).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from pathlib import Path

from kdpipe.data.items import DatasetSplits, Item
from kdpipe.data.layout import finish, list_images, list_images_recursive, prompt_name
from kdpipe.data.registry import register_dataset
from kdpipe.errors import KdpipeError
from kdpipe.io import json_lines

log = logging.getLogger("kdpipe.data")

SPLITS = ("train", "val", "test")
PATH_COLUMNS = ("path", "image", "file", "filename", "filepath")
LABEL_COLUMNS = ("label", "class", "classname", "category")
IMAGEFOLDER_LAYOUT = "a folder with one sub-folder of images per class (optionally inside train/, val/, test/)"
LIST_LAYOUT = "a {kind} file with columns path,label[,split]; relative paths are relative to the file's folder"


def read_classname_file(path: str | Path) -> dict[str, str]:
    """Map label keys (folder names or label values, as strings) to prompt names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KdpipeError(f"class-name file {path} not found (expected JSON {{key: name}} or 'KEY name' lines)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"cannot read class-name file {path}: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise KdpipeError(f"class-name file {path} is not valid JSON: {e}") from None
        if isinstance(data, list):
            return {str(i): str(name) for i, name in enumerate(data)}
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        raise KdpipeError(f"class-name file {path}: expected an object {{key: name}} or a list of names")
    names = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2:
            raise KdpipeError(f"class-name file {path}:{n}: expected 'KEY class name', got {line.strip()!r}")
        names[parts[0]] = parts[1].strip()
    return names


def _names_for(keys: list[str], classnames: str | Path | None, numeric: bool, source: Path) -> list[str]:
    mapping = read_classname_file(classnames) if classnames else {}
    missing = [k for k in keys if k not in mapping]
    if mapping and missing:
        raise KdpipeError(f"class-name file {classnames} has no entry for {missing[:3]} (keys are {sorted(mapping)[:3]}...)")
    if not mapping and numeric:
        log.warning("%s: labels are numbers and no class-name file was given; prompts will use the numbers", source)
    return [mapping[k] if k in mapping else prompt_name(k) for k in keys]


def seeded_split(
    by_class: dict[int, list[str]], seed: int, val_frac: float, test_frac: float
) -> dict[str, list[tuple[str, int]]]:
    """Per class: shuffle with ``seed`` and cut into train/val/test; every class keeps >= 1 train image."""
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac >= 1:
        raise KdpipeError(f"val_frac={val_frac} and test_frac={test_frac} must be >= 0 and sum to less than 1")
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        n = len(paths)
        n_val, n_test = round(n * val_frac), round(n * test_frac)
        while n - n_val - n_test < 1 and (n_val or n_test):
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        n_train = n - n_val - n_test
        out["train"] += [(p, label) for p in paths[:n_train]]
        out["val"] += [(p, label) for p in paths[n_train : n_train + n_val]]
        out["test"] += [(p, label) for p in paths[n_train + n_val :]]
    return out


def _to_items(pairs: list[tuple[str, int]], names: list[str]) -> list[Item]:
    return [Item(p, label, names[label]) for p, label in pairs]


# ---------------------------------------------------------------------------------------------- imagefolder


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@register_dataset("imagefolder", layout=IMAGEFOLDER_LAYOUT, kind="custom", aliases=("folder",))
def read_imagefolder(
    root: Path,
    classnames: str | Path | None = None,
    seed: int = 1,
    val_frac: float = 0.2,
    test_frac: float = 0.3,
    strict: bool = False,
) -> DatasetSplits:
    if not root.is_dir():
        raise KdpipeError(f"imagefolder: {root} is not a folder (expected {IMAGEFOLDER_LAYOUT})")
    name = root.resolve().name or "imagefolder"
    given = [s for s in SPLITS if (root / s).is_dir()]
    if "train" in given:
        keys = sorted({c for s in given for c in _class_folders(root / s)})
        label_of = {k: i for i, k in enumerate(keys)}
        pairs = {
            s: [(os.path.abspath(p), label_of[c]) for c in _class_folders(root / s) for p in list_images_recursive(root / s / c)]
            if s in given else []
            for s in SPLITS
        }
    else:
        keys = [c for c in _class_folders(root) if list_images_recursive(root / c)]
        if not keys:
            loose = list_images(root)
            hint = " (it holds images directly: that is an unlabeled source for shards or classify)" if loose else ""
            raise KdpipeError(f"imagefolder: no class folders with images in {root}{hint}; expected {IMAGEFOLDER_LAYOUT}")
        by_class = {i: [os.path.abspath(p) for p in list_images_recursive(root / k)] for i, k in enumerate(keys)}
        pairs = seeded_split(by_class, seed, val_frac, test_frac)
    names = _names_for(keys, classnames, numeric=False, source=root)
    splits = {s: _to_items(pairs[s], names) for s in SPLITS}
    return finish(name, splits, names, check_files=False, strict=strict)


# ---------------------------------------------------------------------------------------------- csv / jsonl


def _pick(row: dict, columns: tuple[str, ...]) -> str | None:
    for c in columns:
        if c in row and row[c] not in (None, ""):
            return str(row[c]).strip()
    return None


def _rows_to_splits(
    rows: list[dict],
    source: Path,
    kind: str,
    classnames: str | Path | None,
    seed: int,
    val_frac: float,
    test_frac: float,
    strict: bool,
    check_files: bool,
) -> DatasetSplits:
    layout = LIST_LAYOUT.format(kind=kind)
    if not rows:
        raise KdpipeError(f"{kind}: {source} has no rows (expected {layout})")
    base = source.parent
    parsed = []
    for n, row in enumerate(rows, 1):
        path, label = _pick(row, PATH_COLUMNS), _pick(row, LABEL_COLUMNS)
        if path is None or label is None:
            raise KdpipeError(f"{kind}: {source} row {n} lacks a path or a label (expected {layout})")
        split = _pick(row, ("split",))
        if split is not None and split not in SPLITS:
            raise KdpipeError(f"{kind}: {source} row {n}: split {split!r} is not one of train, val, test")
        full = Path(path).expanduser()
        parsed.append((os.path.abspath(full if full.is_absolute() else base / full), label, split))

    raw_labels = {label for _, label, _ in parsed}
    numeric = all(label.lstrip("-").isdigit() for label in raw_labels)
    keys = sorted(raw_labels, key=int) if numeric else sorted(raw_labels)
    label_of = {k: i for i, k in enumerate(keys)}
    names = _names_for(keys, classnames, numeric=numeric, source=source)

    with_split = [p for p in parsed if p[2] is not None]
    if with_split and len(with_split) != len(parsed):
        raise KdpipeError(f"{kind}: {source}: some rows have a split and some do not; give it for all rows or none")
    if with_split:
        pairs = {s: [(p, label_of[lab]) for p, lab, sp in parsed if sp == s] for s in SPLITS}
    else:
        by_class: dict[int, list[str]] = {}
        for p, lab, _ in parsed:
            by_class.setdefault(label_of[lab], []).append(p)
        pairs = seeded_split(by_class, seed, val_frac, test_frac)
    splits = {s: _to_items(pairs[s], names) for s in SPLITS}
    return finish(source.stem, splits, names, check_files=check_files, strict=strict, layout=layout)


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise KdpipeError(f"{kind}: {path} not found (expected {LIST_LAYOUT.format(kind=kind)})")


@register_dataset("csv", layout=LIST_LAYOUT.format(kind="CSV"), kind="custom")
def read_csv(
    root: Path,
    classnames: str | Path | None = None,
    seed: int = 1,
    val_frac: float = 0.2,
    test_frac: float = 0.3,
    strict: bool = False,
    check_files: bool = True,
) -> DatasetSplits:
    _require_file(root, "csv")
    try:
        with open(root, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise KdpipeError(f"csv: cannot read {root}: {e}") from None
    rows = [{(k or "").strip().lower(): v for k, v in row.items()} for row in rows]
    return _rows_to_splits(rows, root, "csv", classnames, seed, val_frac, test_frac, strict, check_files)


@register_dataset("jsonl", layout=LIST_LAYOUT.format(kind="JSONL"), kind="custom")
def read_jsonl(
    root: Path,
    classnames: str | Path | None = None,
    seed: int = 1,
    val_frac: float = 0.2,
    test_frac: float = 0.3,
    strict: bool = False,
    check_files: bool = True,
) -> DatasetSplits:
    _require_file(root, "jsonl")
    rows = []
    try:
        text = root.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"jsonl: cannot read {root}: {e}") from None
    for n, row in json_lines(text, f"jsonl: {root}", 'one object like {"path": ..., "label": ...} per line'):
        if not isinstance(row, dict):
            raise KdpipeError(f"jsonl: {root}:{n}: expected an object like {{\"path\": ..., \"label\": ...}}")
        rows.append({str(k).lower(): v for k, v in row.items()})
    return _rows_to_splits(rows, root, "jsonl", classnames, seed, val_frac, test_frac, strict, check_files)
