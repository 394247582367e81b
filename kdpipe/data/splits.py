"""Base/novel class halves and seeded few-shot subsets, as the CoOp family of papers define them."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace
from pathlib import Path

from kdpipe.data.items import DatasetSplits, Item
from kdpipe.errors import KdpipeError
from kdpipe.io import read_json_or_none, write_json

SUBSETS = ("base", "novel", "all")
FEWSHOT_FORMAT = "kdpipe-fewshot/1"


def base_novel_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """Sorted labels cut in two: base = the first ceil(n/2), novel = the rest."""
    m = math.ceil(num_classes / 2)
    labels = list(range(num_classes))
    return labels[:m], labels[m:]


def subsample(splits: DatasetSplits, subset: str) -> DatasetSplits:
    """Keep the ``base`` or ``novel`` classes (relabelled 0..k-1, class names restricted), or ``all``."""
    if subset not in SUBSETS:
        raise KdpipeError(f"unknown class subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    if subset == "all":
        return splits
    base, novel = base_novel_labels(splits.num_classes)
    selected = base if subset == "base" else novel
    relabel = {old: new for new, old in enumerate(selected)}

    def keep(items: list[Item]) -> list[Item]:
        return [Item(it.path, relabel[it.label], it.classname) for it in items if it.label in relabel]

    return replace(
        splits,
        train=keep(splits.train),
        val=keep(splits.val),
        test=keep(splits.test),
        classnames=[splits.classnames[i] for i in selected],
    )


def _sample_per_class(items: list[Item], k: int, rng: random.Random) -> list[Item]:
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    chosen = []
    for label in sorted(by_label):
        group = by_label[label]
        # fewer than k images: keep them all rather than repeating any (CoOp does the same)
        chosen.extend(group if len(group) <= k else rng.sample(group, k))
    return chosen


def _fingerprint(splits: DatasetSplits) -> str:
    h = hashlib.sha256()
    for split in ("train", "val"):
        for item in getattr(splits, split):
            h.update(f"{split}\0{item.path}\0{item.label}\n".encode())
    return h.hexdigest()[:16]


def _load_cached(path: Path, splits: DatasetSplits, fingerprint: str) -> DatasetSplits | None:
    data = read_json_or_none(path)
    if not isinstance(data, dict):
        return None
    if data.get("format") != FEWSHOT_FORMAT or data.get("fingerprint") != fingerprint:
        return None
    index = {(it.path, it.label): it for it in splits.train + splits.val}
    try:
        train = [index[(p, int(y))] for p, y in data["train"]]
        val = [index[(p, int(y))] for p, y in data["val"]]
    except (KeyError, TypeError, ValueError):
        return None
    return replace(splits, train=train, val=val)


def few_shot(splits: DatasetSplits, shots: int, seed: int, cache_dir: str | Path | None = None) -> DatasetSplits:
    """``shots`` images per class from train and ``min(shots, 4)`` from val, chosen with ``seed``.

    The test split is untouched; ``shots <= 0`` means "all images". The choice is a pure function
    of (items, shots, seed); with ``cache_dir`` it is also stored as JSON (``<name>_shots<K>_seed<S>``)
    and read back while the underlying split is unchanged, so reruns use the very same images.
    """
    if shots <= 0:
        return splits
    fingerprint = _fingerprint(splits)
    cache_path = Path(cache_dir).expanduser() / f"{splits.name}_shots{shots}_seed{seed}.json" if cache_dir else None
    if cache_path is not None and cache_path.is_file():
        cached = _load_cached(cache_path, splits, fingerprint)
        if cached is not None:
            return cached
    rng = random.Random(seed)
    train = _sample_per_class(splits.train, shots, rng)
    val = _sample_per_class(splits.val, min(shots, 4), rng)
    result = replace(splits, train=train, val=val)
    if cache_path is not None:
        write_json(
            cache_path,
            {
                "format": FEWSHOT_FORMAT,
                "dataset": splits.name,
                "shots": shots,
                "seed": seed,
                "fingerprint": fingerprint,
                "train": [[it.path, it.label] for it in train],
                "val": [[it.path, it.label] for it in val],
            },
        )
    return result
