"""``kdpipe status``: every instance of a config and its state, as rows and as plain text."""

from __future__ import annotations

from pathlib import Path

from kdpipe.config import Config
from kdpipe.pipeline.graph import StageGraph
from kdpipe.pipeline.lock import check_run_dir
from kdpipe.pipeline.plan import Plan, StageStatus
from kdpipe.progress import format_duration


def stage_statuses(cfg: Config, run_dir: str | Path, *, graph: StageGraph) -> list[StageStatus]:
    """What ``kdpipe status`` shows: every instance of ``graph`` for the current config and its state."""
    check_run_dir(Path(run_dir))
    return Plan(graph, cfg).statuses(Path(run_dir))


def _counts(rows: list[StageStatus]) -> dict[str, int]:
    """state -> how many rows have it, in the order states first appear."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


def summarize(rows: list[StageStatus]) -> str:
    """``3 done, 1 stale, 2 missing``."""
    return ", ".join(f"{n} {state}" for state, n in _counts(rows).items())


def format_status(rows: list[StageStatus]) -> str:
    """Plain aligned text (also what CI logs get)."""
    table = [("stage", "state", "time", "metric", "why")]
    for r in rows:
        table.append((r.name, r.state, format_duration(r.wall_time_s) if r.wall_time_s is not None else "-", r.headline or "-", r.reason or ""))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + ("  " + row[4] if row[4] else "")
        for row in table
    ).rstrip()


def status_document(rows: list[StageStatus], run_dir: str | Path, recipe: str) -> dict:
    """What ``kdpipe status --json`` prints: the same rows with stable keys, times in seconds."""
    stages = [
        {"name": r.name, "state": r.state, "reason": r.reason, "wall_time_s": r.wall_time_s, "headline": r.headline, "folder": r.folder}
        for r in rows
    ]
    return {"run_dir": str(run_dir), "recipe": recipe, "stages": stages, "counts": _counts(rows)}
