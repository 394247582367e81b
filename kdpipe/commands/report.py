"""``kdpipe report RUN_DIR... --out DIR``: one report over several run dirs (the papers'
cross-dataset table: one line per method, the source column, one column per target, their average)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def report(
    run_dirs: List[Path] = typer.Argument(..., help="run dirs with a finished report stage (one per dataset)", show_default=False),
    out: Path = typer.Option(..., "--out", help="folder for results.md, results.csv and metrics.json"),
    title: Optional[str] = typer.Option(None, "--title", help="the heading of results.md (default: the runs' source and count)"),
) -> None:
    """One table over several run dirs: each run's dataset becomes a column (cross-dataset mode:
    the transfer table, `average` over the targets, the source left out)."""
    from kdpipe.report import write_results
    from kdpipe.report_runs import combine, read_run_report

    reports = [read_run_report(d) for d in run_dirs]
    rows, notes, facts = combine(reports)
    cross = facts["mode"] == "cross"
    runs = f"{len(reports)} run{'s' if len(reports) != 1 else ''}"
    title = title or (f"{facts['source']} -> {runs}" if cross else runs)
    files = write_results(rows, out, title, notes, transfer_source=facts["source"] if cross else None, facts=facts)
    typer.echo(f"wrote {files['markdown']}, {files['csv'].name} and {files['metrics'].name} ({len(rows)} rows from {runs})")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
