"""``kdpipe datasets``: the dataset names kdpipe reads and the folder layout each one expects."""

from __future__ import annotations

import json

import typer


KIND_ORDER = {"benchmark": 0, "domain-generalisation": 1, "custom": 2, "demo": 3}


def dataset_rows() -> list[dict[str, str]]:
    """Every dataset name with its kind and the folder layout it expects, benchmarks first."""
    from kdpipe.data import dataset_entries

    entries = sorted(dataset_entries(), key=lambda e: (KIND_ORDER.get(e.kind, 9), e.name))
    return [{"name": e.name, "kind": e.kind, "layout": e.layout} for e in entries]


def datasets(
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON on stdout (for scripts)"),
) -> None:
    """List dataset names (for --dataset / data.dataset) with the layout expected under --data-root."""
    rows = dataset_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="datasets (benchmarks use the CoOp folder layout under --data-root)")
    for col in ("name", "kind", "expected layout"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], r["layout"])
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets)
