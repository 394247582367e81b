"""``classify --keep-meta json,txt`` for shard inputs: named members of each sample, plus ``__url__``.

Read beside the image stream rather than through it, so the shard reader stays the distillation's
own: each shard of this process's share is read once more, front to back, in the stream's order,
and only the named members are kept. The stream's DataLoader workers read a few shards at a time,
so a small window of shards stays in memory; an entry leaves it once its row has taken it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from kdpipe.errors import KdpipeError

URL_COLUMN = "__url__"


def meta_columns(fields: list[str], reserved: set[str]) -> list[str]:
    """The output columns for ``--keep-meta`` fields (``__url__`` first); one line for a bad name."""
    fields = [f.strip().lower() for f in fields]  # member extensions are matched lower-case, as the reader stores them
    bad = [f for f in fields if not f or f in reserved or f.startswith("__")]
    if bad:
        raise KdpipeError(f"--keep-meta {','.join(fields)}: {bad[0]!r} cannot be a column (names the output already uses); "
                          "name the sample members to keep, e.g. json,txt")
    return [URL_COLUMN, *dict.fromkeys(fields)]


def member_value(field: str, data: bytes | None) -> Any:
    """A member as a cell: JSON members parsed (an object in JSONL, its text in CSV/Parquet), others as text."""
    if data is None:
        return None
    text = data.decode("utf-8", errors="replace")
    if field.endswith("json"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


class ShardMeta:
    """``get(key)`` -> ``{"__url__": ..., field: value, ...}`` for the samples of ``shards``, in order."""

    def __init__(self, shards: list[str], fields: list[str], window: int):
        self.pending = iter(shards)
        self.fields = fields
        self.window = max(2, window)
        self.cache: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()

    def get(self, key: str) -> dict[str, Any]:
        while True:
            for entries in self.cache.values():
                if key in entries:
                    return entries.pop(key)
            if not self._read_next():
                return {}  # not in any shard of this share (cannot happen for a key the stream gave)

    def _read_next(self) -> bool:
        from kdpipe.data.shards.tarread import iter_samples
        from kdpipe.infer.shard_source import sample_key  # the row key of a sample: one definition

        url = next(self.pending, None)
        if url is None:
            return False
        # problems are the image stream's to report (it reads the same bytes); here they only mean "no meta"
        self.cache[url] = {sample_key(url, s["__key__"]): {URL_COLUMN: url, **{f: member_value(f, s.get(f)) for f in self.fields}}
                           for s in iter_samples(url, lambda *problem: None)}
        while len(self.cache) > self.window:
            self.cache.popitem(last=False)
        return True
