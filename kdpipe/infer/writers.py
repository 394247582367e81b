"""Resumable result files for ``classify``: one row per image, every image exactly once.

Columns: the key (``path`` or ``key``), then per rank 1..k the label, ``scores`` (cosine similarity
of the L2-normalised image and class features), ``probs`` (softmax over ALL classes at the model's
logit scale) and the class id, then the ``--keep-meta`` columns (shard inputs). JSONL and Parquet
hold lists (``labels``, ``scores``, ``probs``, ``ids``); CSV has ``label_i, score_i, prob_i, id_i``.

Files beside ``OUT``:
  - ``OUT.meta.json``: written before the first row; the model identity, top-k, key column and
    columns. A re-run with another model (or another top-k, other columns) is refused unless
    ``overwrite``; so is an output of an older kdpipe (no ``probs``), whose rows could not be mixed.
  - ``OUT.skipped.jsonl``: the unreadable images, ``{key, reason}``; they count as done.

Line formats (JSONL, CSV) append each batch with one ``write`` + ``fsync``. After a kill at any
point the file holds whole rows followed at most by one torn row; on resume the torn tail is cut
off and the keys of the whole rows are the done set, so each image ends up written exactly once.
Parquet cannot be appended to, so rows go to atomically written part files, merged into ``OUT``
(atomically) when the run finishes; parts already merged before a kill are recognised by their keys.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kdpipe.errors import KdpipeError
from kdpipe.io import atomic_path, disk_errors, read_json_or_none, write_text

META_FORMAT = "kdpipe-classify-output"
META_VERSION = 1


@dataclass
class Row:
    key: str
    labels: list[str]
    scores: list[float]  # cosine similarities
    ids: list[int]
    probs: list[float] | None = None  # softmax over all classes; None only from callers that have none
    meta: dict[str, Any] | None = None  # the extra columns (``--keep-meta``), by column name

    @classmethod
    def from_record(cls, record: dict[str, Any], key_column: str, extra_columns=()) -> "Row":
        """A row back from a JSONL/Parquet record (merging parts)."""
        return cls(str(record[key_column]), list(record["labels"]), list(record["scores"]), list(record["ids"]),
                   record.get("probs"), {c: record.get(c) for c in extra_columns} or None)

    def cell(self, column: str) -> Any:
        return (self.meta or {}).get(column)


RESULT_COLUMNS = ("labels", "scores", "probs", "ids")


def part_path(out: Path, part: int, parts: int) -> Path:
    """``--parts``: part ``part`` of ``parts`` beside ``out``, same format (``x.part-00001-of-00004.jsonl``)."""
    return out.with_name(f"{out.stem}.part-{part:05d}-of-{parts:05d}{out.suffix}")


def part_paths(out: Path) -> dict[int, list[Path]]:
    """Part files of any count found beside ``out``, by their count (resume / refusal checks)."""
    found: dict[int, list[Path]] = {}
    for p in sorted(out.parent.glob(f"{out.stem}.part-*-of-*{out.suffix}")):
        try:
            found.setdefault(int(p.stem.rsplit("-of-", 1)[1]), []).append(p)
        except ValueError:
            continue
    return found


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def skipped_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.jsonl")


# --------------------------------------------------------------------------- formats
_FORMATS: dict[str, Callable[..., "RowFile"]] = {}


def register_format(*suffixes: str):
    def add(cls):
        for s in suffixes:
            _FORMATS[s] = cls
        return cls

    return add


def output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in _FORMATS:
        raise KdpipeError(f"--out {out}: unknown output format {suffix or '(no suffix)'}; use one of {', '.join(sorted(_FORMATS))}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise KdpipeError(f"--out {out}: Parquet output needs pyarrow (pip install 'kdpipe[parquet]'); or write .jsonl or .csv") from None
    return suffix


class RowFile(ABC):
    """One output file: reads back the keys it holds, appends rows durably, finishes."""

    def __init__(self, path: Path, key_column: str, top_k: int, extra_columns=()):
        self.path = path
        self.key_column = key_column
        self.top_k = top_k
        self.extra_columns = list(extra_columns)

    @abstractmethod
    def recover(self) -> set[str]:
        """Repair a torn tail left by a kill; return the keys of the complete rows."""

    @abstractmethod
    def append(self, rows: list[Row]) -> None:
        """Add rows durably (they survive a kill once this returns)."""

    @abstractmethod
    def read(self) -> list[Row]:
        """Every complete row in the file (merging ``--parts``)."""

    def unwritable(self, key: str) -> str | None:
        """Why this key cannot be stored in this format (None: it can)."""
        return None

    def finish(self) -> None:
        """Called once the whole input is done."""


class LineFile(RowFile):
    """A text file of one record per line, appended with one write + fsync per batch."""

    header: str = ""

    @abstractmethod
    def encode(self, row: Row) -> str:
        """One row as a line, newline included."""

    @abstractmethod
    def decode_key(self, line: str) -> str:
        """The key of a line this format wrote; raises ValueError/KeyError on anything else."""

    def recover(self) -> set[str]:
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        keys: set[str] = set()
        pos, good_end, lines = 0, 0, data.split(b"\n")
        whole = lines[:-1]  # the last piece has no newline: empty, or a torn row
        for n, raw in enumerate(whole):
            end = pos + len(raw) + 1
            try:
                line = raw.decode("utf-8")
                if not (n == 0 and self.header and line == self.header.rstrip("\n")):
                    keys.add(self.decode_key(line))
            except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError):
                if n < len(whole) - 1:
                    raise KdpipeError(
                        f"{self.path} line {n + 1} is not a row kdpipe wrote; fix or remove the file, or pass --overwrite"
                    ) from None
                break  # a damaged last row: treat like a torn one
            pos = good_end = end
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return keys

    def append(self, rows: list[Row]) -> None:
        if not rows:
            return
        text = "".join(self.encode(r) for r in rows)
        new = not self.path.exists() or self.path.stat().st_size == 0
        _append_durably(self.path, ((self.header if new else "") + text).encode("utf-8"))

    @abstractmethod
    def decode(self, line: str) -> Row:
        """A row back from a line this format wrote."""

    def read(self) -> list[Row]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()[1 if self.header else 0:]
        return [self.decode(ln) for ln in lines if ln.strip()]


@register_format(".jsonl", ".ndjson")
class JsonlFile(LineFile):
    def encode(self, row: Row) -> str:
        record = {self.key_column: row.key, "labels": row.labels, "scores": row.scores, "probs": row.probs, "ids": row.ids}
        record.update((c, row.cell(c)) for c in self.extra_columns)
        return json.dumps(record, ensure_ascii=False) + "\n"

    def decode_key(self, line: str) -> str:
        return str(json.loads(line)[self.key_column])

    def decode(self, line: str) -> Row:
        return Row.from_record(json.loads(line), self.key_column, self.extra_columns)


@register_format(".csv")
class CsvFile(LineFile):
    per_rank = 4  # label, score, prob, id

    def __init__(self, path: Path, key_column: str, top_k: int, extra_columns=()):
        super().__init__(path, key_column, top_k, extra_columns)
        cols = [key_column]
        for i in range(1, top_k + 1):
            cols += [f"label_{i}", f"score_{i}", f"prob_{i}", f"id_{i}"]
        self.header = _csv_line(cols + self.extra_columns)

    def unwritable(self, key: str) -> str | None:
        # recovery reads the file line by line, so a record must not span lines
        return "path contains a line break, which CSV rows here cannot hold; write .jsonl instead" if "\n" in key or "\r" in key else None

    def encode(self, row: Row) -> str:
        cells: list[Any] = [row.key]
        for i in range(self.top_k):
            if i < len(row.labels):
                prob = f"{row.probs[i]:.6g}" if row.probs is not None else ""
                cells += [row.labels[i], f"{row.scores[i]:.6f}", prob, row.ids[i]]
            else:
                cells += [""] * self.per_rank
        cells += [_csv_cell(row.cell(c)) for c in self.extra_columns]
        return _csv_line(cells)

    def _cells(self, line: str) -> list[str]:
        (cells,) = list(csv.reader([line]))
        if len(cells) != 1 + self.per_rank * self.top_k + len(self.extra_columns):
            raise ValueError("wrong number of columns")
        return cells

    def decode_key(self, line: str) -> str:
        return self._cells(line)[0]

    def decode(self, line: str) -> Row:
        cells = self._cells(line)
        ranks = [cells[1 + self.per_rank * i: 1 + self.per_rank * (i + 1)] for i in range(self.top_k)]
        ranks = [r for r in ranks if r[0] != "" or r[3] != ""]
        probs = [float(r[2]) for r in ranks] if all(r[2] != "" for r in ranks) else None
        extra = dict(zip(self.extra_columns, cells[1 + self.per_rank * self.top_k:]))
        return Row(cells[0], [r[0] for r in ranks], [float(r[1]) for r in ranks], [int(r[3]) for r in ranks], probs, extra or None)


@register_format(".parquet")
class ParquetFile(RowFile):
    """Rows buffered into atomically written part files; merged into the final file at the end."""

    part_rows = 8192

    def __init__(self, path: Path, key_column: str, top_k: int, extra_columns=()):
        super().__init__(path, key_column, top_k, extra_columns)
        self.parts = path.with_name(path.name + ".parts")
        self.buffer: list[Row] = []

    def _keys(self, file: Path) -> list[str]:
        import pyarrow.parquet as pq

        return [str(k) for k in pq.read_table(file, columns=[self.key_column]).column(0).to_pylist()]

    def recover(self) -> set[str]:
        keys = set(self._keys(self.path)) if self.path.exists() else set()
        for part in sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else []:
            pk = self._keys(part)
            if pk and all(k in keys for k in pk):
                part.unlink()  # merged into the final file before a kill removed it
            else:
                keys.update(pk)
        return keys

    def append(self, rows: list[Row]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= self.part_rows:
            self._flush()

    def _table(self, rows: list[Row]):
        import pyarrow as pa

        columns = {
            self.key_column: pa.array([r.key for r in rows], pa.string()),
            "labels": pa.array([r.labels for r in rows], pa.list_(pa.string())),
            "scores": pa.array([r.scores for r in rows], pa.list_(pa.float32())),
            "probs": pa.array([r.probs for r in rows], pa.list_(pa.float32())),
            "ids": pa.array([r.ids for r in rows], pa.list_(pa.int64())),
        }
        columns.update((c, pa.array([_csv_cell(r.cell(c)) if r.cell(c) is not None else None for r in rows], pa.string()))
                       for c in self.extra_columns)
        return pa.table(columns)

    def read(self) -> list[Row]:
        import pyarrow.parquet as pq

        files = ([self.path] if self.path.exists() else []) + (sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else [])
        return [Row.from_record(r, self.key_column, self.extra_columns) for f in files for r in pq.read_table(f).to_pylist()]

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        # after the first number in use: parts merged before a kill may be gone from the middle
        n = max((int(p.stem.split("-")[1]) for p in self.parts.glob("part-*.parquet")), default=-1) + 1
        with atomic_path(self.parts / f"part-{n:06d}.parquet") as tmp:
            pq.write_table(self._table(self.buffer), tmp)
            _fsync_file(tmp)
        self.buffer = []

    def finish(self) -> None:
        import pyarrow.parquet as pq

        self._flush()
        parts = sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else []
        if not parts:
            return
        sources = ([self.path] if self.path.exists() else []) + parts
        schema = pq.read_schema(sources[0])  # as written (list field names can differ from in-memory ones)
        with atomic_path(self.path) as tmp:
            with pq.ParquetWriter(tmp, schema) as w:
                for src in sources:
                    w.write_table(pq.read_table(src).cast(schema))
            _fsync_file(tmp)
        shutil.rmtree(self.parts)


# --------------------------------------------------------------------------- the writer
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
        self.file = _FORMATS[suffix](self.out, key_column, top_k, extra_columns)
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
            other = _FORMATS[self.out.suffix.lower()](part, self.meta["key_column"], self.meta["top_k"], self.file.extra_columns)
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
            _append_durably(self.path, text.encode("utf-8"))


def read_rows(out: str | Path) -> list[dict[str, Any]]:
    """All rows of a classify output as dicts (JSONL and CSV; Parquet with pyarrow)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def _model_label(model: dict[str, Any] | None) -> str:
    if not model:
        return "unknown"
    return f"{model.get('name', 'model')} {str(model.get('id'))[:12]}"


def _csv_cell(value: Any) -> str:
    """A meta value as one text cell: strings as they are, anything else as JSON, missing as empty."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` and force it to disk; a failed append (a full disk) is cut off again, so the
    file keeps whole rows only and the next run resumes after the last of them."""
    with disk_errors(path, len(data)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # the write's own error is the one to report
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_meta(path: Path, meta: dict) -> None:
    # ensure_ascii=False: class names and paths stay readable in the file people open
    write_text(path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
