"""Line formats (JSONL, CSV): one record per line, each batch appended with one ``write`` + ``fsync``.

After a kill the file holds whole rows followed at most by one torn row, which :meth:`LineFile.recover`
cuts off; the keys of the whole rows are the done set.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from abc import abstractmethod
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.infer.writers.registry import register_format
from kdpipe.infer.writers.rows import Row, RowFile, meta_cell
from kdpipe.io import disk_errors


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
        append_durably(self.path, ((self.header if new else "") + text).encode("utf-8"))

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
        cells += [meta_cell(row.cell(c)) for c in self.extra_columns]
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


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def append_durably(path: Path, data: bytes) -> None:
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
