"""``classify`` under ``torchrun``: every process takes its own share of the images.

Which process takes an image depends only on its key (a stable hash for files, the shard for
shards), never on what is already done, so processes agree without talking. Each process appends
to its own part file (``OUT.ranks/rank-N.jsonl``, resumable like any output); rank 0 merges the
parts into ``OUT`` (dropping keys already there) once all are finished, and, at the start of a
run, merges parts a killed run left behind. The merged output holds the same rows as a
single-process run, each image exactly once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from kdpipe.dist import Ranks
from kdpipe.errors import KdpipeError
from kdpipe.infer.writers import JsonlFile, ResultWriter, Row, skipped_path
from kdpipe.io import json_lines


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ranks")


def settle(ranks: Ranks, error: BaseException | None) -> None:
    """Raise this rank's own error, or a one-line one when only another rank failed."""
    if ranks.any_failed(error is not None):
        if error is not None:
            raise error
        raise KdpipeError("another classify process failed; its error is in its output")


def merge_parts(writer: ResultWriter) -> int:
    """Append every part's rows and skipped entries to ``writer`` (keys already there are dropped), then remove the parts."""
    folder = parts_dir(writer.out)
    if not folder.exists():
        return 0
    before = writer.written
    key = writer.meta["key_column"]
    for part in sorted(folder.glob("rank-*.jsonl")):
        if part.name.endswith(".skipped.jsonl"):
            continue
        JsonlFile(part, key, writer.meta["top_k"]).recover()  # drops a torn last row of a killed rank
        rows = [row for _, row in json_lines(part.read_text(encoding="utf-8"), str(part), "one classify row per line")]
        skipped_file = skipped_path(part)
        skipped = [entry for _, entry in json_lines(skipped_file.read_text(encoding="utf-8"), str(skipped_file), "one skipped image per line")] \
            if skipped_file.exists() else []
        # every column the part holds (probs, --keep-meta), under the same key as a single process writes
        writer.append([Row.from_record(r, key, writer.file.extra_columns) for r in rows],
                      [(s[key], s["reason"]) for s in skipped if s.get("reason") is not None])
    shutil.rmtree(folder)
    return writer.written - before


def classify_ranked(run: Callable[[ResultWriter, set[str]], Any], out: Path, writer_args: dict[str, Any],
                    overwrite: bool, rank: int, world: int):
    """Run ``run(part_writer, done)`` on every rank; rank 0 owns ``out`` and merges the parts."""
    ranks = Ranks()
    try:
        main, error = None, None
        if rank == 0:
            try:
                main = ResultWriter(out, overwrite=overwrite, **writer_args)  # identity check, repair, meta
                if overwrite and parts_dir(out).exists():
                    shutil.rmtree(parts_dir(out))
                merge_parts(main)  # parts a killed run left behind
            except Exception as e:  # noqa: BLE001  (re-raised by settle, after telling the others)
                error = e
        settle(ranks, error)
        done = set(ranks.share(sorted(main.done) if rank == 0 else None))
        part = parts_dir(out) / f"rank-{rank}.jsonl"
        part.parent.mkdir(parents=True, exist_ok=True)
        summary, error = None, None
        try:
            part_writer = ResultWriter(part, overwrite=True, **writer_args)
            part_writer.done |= done
            summary = run(part_writer, done)
        except Exception as e:  # noqa: BLE001
            error = e
        settle(ranks, error)
        if rank == 0:
            merged = merge_parts(main)
            main.close()
            summary.rows_new, summary.resumed, summary.out = merged, len(done), out
            summary.rows_total = main.rows_resumed + main.written
            summary.skipped_new = main.newly_skipped
            summary.skipped_total = len(main.skipped_done) + len(main.newly_skipped)
        return summary
    finally:
        ranks.close()
