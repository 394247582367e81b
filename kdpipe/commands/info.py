"""``kdpipe models`` and ``kdpipe version``: what this install can load and run."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer


RANDOM_INIT = "random init (tests, demo)"


def model_rows() -> list[dict[str, Any]]:
    """One row per backbone name kdpipe knows: its open_clip architecture, weights and dimensions."""
    from kdpipe.clip.backbones import BUILTIN_CONFIG_DIRS, FRIENDLY_NAMES, model_config, parse_spec, spec_activation

    # friendly names show the architecture they build: the activation follows the tag's weights
    names = [(name, parse_spec(name)[0], tag) for name, (_, tag) in FRIENDLY_NAMES.items()]
    names += [(p.stem, p.stem, None) for d in BUILTIN_CONFIG_DIRS for p in sorted(d.glob("*.json"))]
    rows = []
    for name, arch, tag in names:
        cfg = model_config(arch) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        rows.append({
            "name": name, "open_clip": arch, "weights": tag, "activation": spec_activation(name),
            "embed_dim": cfg.get("embed_dim"), "vision_width": v.get("width"), "vision_layers": v.get("layers"),
            "text_width": t.get("width"), "text_layers": t.get("layers"), "image_size": v.get("image_size"),
        })
    return rows


def models(
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON on stdout (for scripts)"),
) -> None:
    """List the backbone names kdpipe knows, with their activation and dimensions (no weights are loaded)."""
    from kdpipe.progress import busy

    with busy("loading open_clip's model list"):  # importing torch and open_clip alone takes seconds
        rows = model_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    def cell(value: Any) -> str:
        return "?" if value is None else str(value)

    table = Table(title="backbones (any open_clip NAME:TAG, hf-hub:org/repo, local-dir:PATH or a checkpoint file also works)")
    for col in ("name", "open_clip", "weights", "activation", "embed", "vision width x layers", "text width x layers", "image"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], r["open_clip"], r["weights"] or RANDOM_INIT, r["activation"], cell(r["embed_dim"]),
            f"{cell(r['vision_width'])} x {cell(r['vision_layers'])}", f"{cell(r['text_width'])} x {cell(r['text_layers'])}",
            cell(r["image_size"]),
        )
    # a pipe gets the whole table, not rich's 80 columns with the activation cut off
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def version() -> None:
    """Print the versions of kdpipe, torch, open_clip and faiss, and whether a GPU is visible."""
    import open_clip
    import torch

    import kdpipe

    try:
        import faiss

        faiss_version = f"{faiss.__version__} ({'gpu' if hasattr(faiss, 'StandardGpuResources') else 'cpu'})"
    except ImportError:
        faiss_version = "not installed (flat search uses torch; pip install 'kdpipe[cpu]' or 'kdpipe[gpu]')"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    typer.echo(f"kdpipe     {kdpipe.__version__}")
    typer.echo(f"torch      {torch.__version__}")
    typer.echo(f"open_clip  {open_clip.__version__}")
    typer.echo(f"faiss      {faiss_version}")
    typer.echo(f"gpu        {gpu}")


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("version")(version)
