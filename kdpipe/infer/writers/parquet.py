"""Parquet: it cannot be appended to, so rows go to atomically written part files, merged into the
output (atomically) when the run finishes; parts already merged before a kill are recognised by their keys."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kdpipe.infer.writers.registry import register_format
from kdpipe.infer.writers.rows import Row, RowFile, meta_cell
from kdpipe.io import atomic_path


def arrow_table(rows: list[Row], key_column: str, extra_columns=()):
    """classify's rows as Arrow columns: the key, labels, scores, probs, ids, then ``extra_columns`` as text."""
    import pyarrow as pa

    columns = {
        key_column: pa.array([r.key for r in rows], pa.string()),
        "labels": pa.array([r.labels for r in rows], pa.list_(pa.string())),
        "scores": pa.array([r.scores for r in rows], pa.list_(pa.float32())),
        "probs": pa.array([r.probs for r in rows], pa.list_(pa.float32())),
        "ids": pa.array([r.ids for r in rows], pa.list_(pa.int64())),
    }
    columns.update((c, pa.array([meta_cell(r.cell(c)) if r.cell(c) is not None else None for r in rows], pa.string()))
                   for c in extra_columns)
    return pa.table(columns)


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
            pq.write_table(arrow_table(self.buffer, self.key_column, self.extra_columns), tmp)
            fsync_file(tmp)
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
            fsync_file(tmp)
        shutil.rmtree(self.parts)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
