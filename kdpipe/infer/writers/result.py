"""The resumable writer of one classify output: its rows and skipped images, every image exactly once.

``OUT.meta.json`` is written before the first row (model identity, top-k, key column, columns); a
re-run with another model or other columns is refused unless ``overwrite``. ``OUT.skipped.jsonl``
holds the unreadable images, ``{key, reason}``; they count as done.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.infer.writers.lines import JsonlFile, append_durably
from kdpipe.infer.writers.paths import meta_path, skipped_path
from kdpipe.infer.writers.registry import output_format, row_file_class
from kdpipe.infer.writers.rows import RESULT_COLUMNS, Row
from kdpipe.io import json_lines, read_json_or_none, write_text

META_FORMAT = "kdpipe-classify-output"
META_VERSION = 1


class ResultWriter:
    """Rows and skipped images of one output, resumable. ``done`` holds every key already there."""

    def __init__(self, out: str | Path, *, key_column: str, top_k: int, model: dict[str, Any], overwrite: bool = False,
                 extra_meta: dict[str, Any] | None = None, extra_columns=()):
        self.out = Path(out)
        suffix = output_format(self.out)
        if not model.get("id"):
            raise ValueError("model identity needs an 'id'")
        self.meta = {"format": META_FORMAT, "version": META_VERSION, "model": model, "top_k": top_k,
                     "key_column": key_column, "columns": [key_column, *RESULT_COLUMNS, *extra_columns],
                     "output_format": suffix.lstrip("."), **(extra_meta or {})}
        self.file = row_file_class(suffix)(self.out, key_column, top_k, extra_columns)
        self.skipped = _SkippedFile(skipped_path(self.out), key_column)
        if overwrite:
            self._remove_previous()
        else:
            self._check_previous()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # one set of keys for the whole run (it grows by each batch); the resumed rows only as a count
        self.skipped_done = self.skipped.recover()
        self.done = self.file.recover()
        self.rows_resumed = len(self.done)
        self.done |= self.skipped_done
        self.resumed = len(self.done)
        _write_meta(meta_path(self.out), self.meta)
        self.written = 0
        self.newly_skipped: list[tuple[str, str]] = []

    def _remove_previous(self) -> None:
        remove_output(self.out)

    def _check_previous(self) -> None:
        mp = meta_path(self.out)
        if not mp.exists():
            if self.out.exists():
                raise KdpipeError(f"{self.out} exists but was not written by kdpipe classify (no {mp.name}); pass --overwrite to replace it")
            return
        prev = read_json_or_none(mp)
        if not isinstance(prev, dict):
            raise KdpipeError(f"{mp} is unreadable, so {self.out} cannot be resumed safely; pass --overwrite to start over")
        prev_model = (prev.get("model") or {}).get("id")
        if prev_model != self.meta["model"]["id"]:
            raise KdpipeError(
                f"{self.out} was written by another model ({_model_label(prev.get('model'))}, not "
                f"{_model_label(self.meta['model'])}); pass --overwrite to replace it, or choose another --out"
            )
        if "columns" not in prev:  # before probs: its rows cannot be mixed with rows that have them
            raise KdpipeError(f"{self.out} was written by an older kdpipe (no probs column), use --overwrite")
        for k in ("top_k", "key_column", "columns"):
            if prev.get(k) != self.meta[k]:
                raise KdpipeError(
                    f"{self.out} was written with {k.replace('_', '-')} {prev.get(k)}, this run uses {self.meta[k]}; "
                    "use the same setting to resume, or pass --overwrite"
                )

    def append(self, rows: list[Row], skipped: list[tuple[str, str]] = ()) -> set[str]:
        """Write one batch; rows or skipped keys already done are dropped (never written twice).

        Returns the keys of ``rows`` that have a row in the output now (written before or now)."""
        keep, skip, seen = [], [], set()
        have = {r.key for r in rows if r.key in self.done and r.key not in self.skipped_done}
        for r in rows:
            if r.key in self.done or r.key in seen:
                continue
            seen.add(r.key)
            why = self.file.unwritable(r.key)
            if why:
                skip.append((r.key, why))
            else:
                keep.append(r)
        for k, why in skipped:
            if k not in self.done and k not in seen:
                seen.add(k)
                skip.append((k, why))
        self.file.append(keep)
        self.skipped.append(skip)
        self.done |= seen
        self.written += len(keep)
        self.newly_skipped += skip
        return have | {r.key for r in keep}

    def close(self) -> None:
        self.file.finish()

    def merge(self, parts: list[Path]) -> int:
        """Append the rows and skipped entries of other outputs of this run (``--parts`` files),
        dropping keys already here, finish, then remove the parts with their meta and skipped files.
        Parts go only once the merged file is durable; a killed merge is simply run again."""
        before = self.written
        for part in parts:
            other = row_file_class(self.out.suffix.lower())(part, self.meta["key_column"], self.meta["top_k"], self.file.extra_columns)
            other.recover()  # a torn last row of a killed part
            skipped = _SkippedFile(skipped_path(part), self.meta["key_column"])
            skipped.recover()
            self.append(other.read(), skipped.entries())
        self.close()
        for part in parts:
            remove_output(part)
        return self.written - before


def remove_output(out: Path) -> None:
    """Remove an output with everything kdpipe keeps beside it (meta, skipped list, Parquet staging)."""
    for p in (out, meta_path(out), skipped_path(out), out.with_name(out.name + ".parts")):
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()


class _SkippedFile(JsonlFile):
    def __init__(self, path: Path, key_column: str):
        super().__init__(path, key_column, 0, ("reason",))

    def decode(self, line: str) -> Row:
        record = json.loads(line)
        return Row(str(record[self.key_column]), [], [], [], None, {"reason": record.get("reason")})

    def entries(self) -> list[tuple[str, str]]:
        return [(r.key, r.cell("reason")) for r in self.read()]

    def append(self, skipped) -> None:
        if skipped:
            text = "".join(json.dumps({self.key_column: k, "reason": why}, ensure_ascii=False) + "\n" for k, why in skipped)
            append_durably(self.path, text.encode("utf-8"))


def read_rows(out: str | Path) -> list[dict[str, Any]]:
    """All rows of a classify output as dicts (JSONL and CSV; Parquet with pyarrow)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return [row for _, row in json_lines(out.read_text(encoding="utf-8"), str(out), "one classify row per line")]
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def _model_label(model: dict[str, Any] | None) -> str:
    if not model:
        return "unknown"
    return f"{model.get('name', 'model')} {str(model.get('id'))[:12]}"


def _write_meta(path: Path, meta: dict) -> None:
    # ensure_ascii=False: class names and paths stay readable in the file people open
    write_text(path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
