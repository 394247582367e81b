"""``kdpipe methods``: the prompt methods, what each learns and how many parameters on a backbone."""

from __future__ import annotations

import logging

import typer

DEFAULT_BACKBONE = "ViT-B-16"  # open_clip architecture, random init: counts depend on shapes only


def methods(
    backbone: str = typer.Option(
        DEFAULT_BACKBONE, "--backbone", "-b", help="model spec whose shapes size the prompts (no weights needed for an architecture name)"
    ),
    teacher_dim: int = typer.Option(768, help="teacher embed dim, sizes the promptkd projector (768 = ViT-L/14)"),
) -> None:
    """List the prompt methods with a one-line description and their learned-parameter count."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.clip import load_backbone
    from kdpipe.methods import build_method, get_method, list_methods

    # a bare architecture name is random init on purpose here: open_clip's warning about it is noise
    logging.disable(logging.WARNING)
    try:
        bb = load_backbone(backbone)
    finally:
        logging.disable(logging.NOTSET)
    table = Table(title=f"prompt methods (learned parameters on {backbone}, reference defaults)")
    for col, justify in (("method", "left"), ("learned", "right"), ("epochs", "right"), ("batch", "right"), ("lr", "right"), ("description", "left")):
        table.add_column(col, justify=justify)
    for name in list_methods():
        overrides = {"teacher_dim": teacher_dim} if "teacher_dim" in get_method(name).config_cls.field_names() else None
        m = build_method(name, bb, ["class"], overrides)
        cfg = m.cfg
        trains = m.num_learned() > 0
        row = [str(cfg.epochs), str(cfg.batch_size), f"{cfg.lr:g}"] if trains else ["-", "-", "-"]
        table.add_row(name, f"{m.num_learned():,}", *row, cfg.description)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("methods")(methods)
