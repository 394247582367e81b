"""``kdpipe methods``: the prompt methods, what each learns and how many parameters on a backbone."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import typer

DEFAULT_BACKBONE = "ViT-B-16"  # open_clip architecture, random init: counts depend on shapes only


def method_rows(backbone: str, teacher_dim: int) -> list[dict[str, Any]]:
    """Each method's learned-parameter count on ``backbone`` and its reference schedule (None where
    it trains nothing)."""
    from kdpipe.clip import load_backbone, parse_spec
    from kdpipe.methods import build_method, get_method, list_methods

    # Counts depend on shapes only: build the spec's architecture with random init, so no weights
    # are read or downloaded (open_clip's random-init warning is noise here).
    arch, _ = parse_spec(backbone)
    logging.disable(logging.WARNING)
    try:
        bb = load_backbone(backbone if arch.startswith(("hf-hub:", "local-dir:")) else arch)
    finally:
        logging.disable(logging.NOTSET)
    rows = []
    for name in list_methods():
        overrides = {"teacher_dim": teacher_dim} if "teacher_dim" in get_method(name).config_cls.field_names() else None
        m = build_method(name, bb, ["class"], overrides)
        cfg, learned = m.cfg, m.num_learned()
        trains = learned > 0
        rows.append({
            "method": name, "learned": learned, "epochs": cfg.epochs if trains else None,
            "batch_size": cfg.batch_size if trains else None, "lr": float(cfg.lr) if trains else None,
            "description": cfg.description,
        })
    return rows


def methods(
    backbone: str = typer.Option(
        DEFAULT_BACKBONE, "--backbone", "-b", help="model spec whose shapes size the prompts (no weights needed for an architecture name)"
    ),
    teacher_dim: int = typer.Option(768, help="teacher embed dim, sizes the promptkd projector (768 = ViT-L/14)"),
    reference: bool = typer.Option(
        False, "--reference", help="show each method's default prompts and schedule with the official config they come from"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON on stdout (for scripts)"),
) -> None:
    """List the prompt methods with a one-line description and their learned-parameter count."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.progress import busy

    if reference:
        if as_json:
            typer.echo(json.dumps(reference_rows(), indent=2))
        else:
            Console(width=None if sys.stdout.isatty() else 200).print(reference_table())
        return

    with busy(f"building every method on {backbone}"):  # torch, open_clip and a ViT: seconds
        rows = method_rows(backbone, teacher_dim)
    if as_json:
        typer.echo(json.dumps({"backbone": backbone, "methods": rows}, indent=2))
        return
    table = Table(title=f"prompt methods (learned parameters on {backbone}, reference defaults)")
    for col, justify in (("method", "left"), ("learned", "right"), ("epochs", "right"), ("batch", "right"), ("lr", "right"), ("description", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        trained = [str(r["epochs"]), str(r["batch_size"]), f"{r['lr']:g}"] if r["epochs"] is not None else ["-", "-", "-"]
        table.add_row(r["method"], f"{r['learned']:,}", *trained, r["description"])
    Console().print(table)


def reference_rows() -> list[dict[str, str]]:
    """Each method's base-to-novel defaults beside the official config file they are taken from."""
    from kdpipe.methods import get_method, list_methods

    rows = []
    for name in list_methods():
        cls = get_method(name).config_cls
        cfg = cls()
        ctx, depth = cfg.prompt_shape()
        trains = cfg.epochs > 0
        rows.append({
            "method": name, "n_ctx": ctx, "depth": depth,
            "lr": f"{cfg.lr:g}" if trains else "-", "batch": str(cfg.batch_size) if trains else "-",
            "epochs": str(cfg.epochs) if trains else "-", "reference": cls.reference, "departs": cls.departs or "-",
        })
    return rows


def reference_table():
    from rich.table import Table

    table = Table(title="method defaults (base-to-novel, ViT-B/16) and the official config they come from")
    rows = reference_rows()
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*row.values())
    return table


def register(app: typer.Typer) -> None:
    app.command("methods")(methods)
