"""``kdpipe datasets``: the dataset names kdpipe reads and the folder layout each one expects."""

from __future__ import annotations

import typer


def datasets() -> None:
    """List dataset names (for --dataset / data.dataset) with the layout expected under --data-root."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.data import dataset_entries

    table = Table(title="datasets (benchmarks use the CoOp folder layout under --data-root)")
    for col in ("name", "kind", "expected layout"):
        table.add_column(col)
    order = {"benchmark": 0, "domain-generalisation": 1, "custom": 2, "demo": 3}
    for entry in sorted(dataset_entries(), key=lambda e: (order.get(e.kind, 9), e.name)):
        table.add_row(entry.name, entry.kind, entry.layout)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets)
