"""Read shards once and count what is in them: samples, classes, bytes, and every corrupt member."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from kdpipe.data.shards.patterns import expand_pattern, expected_counts
from kdpipe.data.shards.samples import BadSample, decode_sample, optional_label
from kdpipe.data.shards.tarread import iter_samples


@dataclass
class ShardInfo:
    url: str
    samples: int = 0  # readable samples
    bytes: int = 0  # size of the members read: the same whether the shard is a file or a pipe: stream
    extensions: Counter = field(default_factory=Counter)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


@dataclass
class InspectReport:
    shards: list[ShardInfo]
    labels: Counter  # label -> readable samples
    classnames: dict[int, str]  # label -> name, from the samples' json meta

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def corrupt(self) -> list[tuple[str, str, str]]:
        return [(s.url, key, reason) for s in self.shards for key, reason in s.corrupt]


def _meta(sample: dict) -> dict:
    try:
        meta = json.loads(sample.get("json", b"{}"))
        return meta if isinstance(meta, dict) else {}
    except ValueError:
        return {}


def inspect_shards(pattern, decode: bool = True, progress: Callable[[int], None] | None = None) -> InspectReport:
    """Read every shard of ``pattern``; with ``decode`` each image is fully decoded to find corrupt ones."""
    urls = expand_pattern(pattern)
    expected = expected_counts(urls)
    labels: Counter = Counter()
    classnames: dict[int, str] = {}
    infos = []
    for url in urls:
        info = ShardInfo(url)

        dropped = []  # samples lost inside the archive, never yielded

        def on_problem(shard, key, reason, info=info, dropped=dropped):
            info.corrupt.append((key, reason))
            if not key.startswith("<"):
                dropped.append(key)

        seen = 0
        for sample in iter_samples(url, on_problem):
            seen += 1
            info.bytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
            info.extensions.update(k for k in sample if not k.startswith("__"))
            try:
                if decode:
                    decode_sample(sample, with_labels=False)
                label = optional_label(sample)
            except BadSample as e:
                info.corrupt.append((sample["__key__"], str(e)))
                continue
            info.samples += 1
            if label is not None:
                labels[label] += 1
                name = _meta(sample).get("classname")
                if isinstance(name, str):
                    classnames.setdefault(label, name)
        promised = expected.get(url)
        if promised is not None and seen + len(dropped) < promised:
            missing = promised - seen - len(dropped)
            info.corrupt.append(("<missing>", f"{missing} of {promised} samples missing (archive ends early)"))
        infos.append(info)
        if progress is not None:
            progress(1)
    return InspectReport(infos, labels, classnames)
