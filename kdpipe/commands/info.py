"""``kdpipe models`` and ``kdpipe version``: what this install can load and run."""

from __future__ import annotations

import sys

import typer


def models() -> None:
    """List the backbone names kdpipe knows, with their activation and dimensions (no weights are loaded)."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.clip.backbones import BUILTIN_CONFIG_DIRS, FRIENDLY_NAMES, model_config, parse_spec, spec_activation

    table = Table(title="backbones (any open_clip NAME:TAG, hf-hub:org/repo, local-dir:PATH or a checkpoint file also works)")
    for col in ("name", "open_clip", "weights", "activation", "embed", "vision width x layers", "text width x layers", "image"):
        table.add_column(col)
    # friendly names show the architecture they build: the activation follows the tag's weights
    rows = [(name, parse_spec(name)[0], tag) for name, (_, tag) in FRIENDLY_NAMES.items()]
    rows += [(p.stem, p.stem, "random init (tests, demo)") for d in BUILTIN_CONFIG_DIRS for p in sorted(d.glob("*.json"))]
    for name, arch, tag in rows:
        cfg = model_config(arch) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        table.add_row(
            name,
            arch,
            tag,
            spec_activation(name),
            str(cfg.get("embed_dim", "?")),
            f"{v.get('width', '?')} x {v.get('layers', '?')}",
            f"{t.get('width', '?')} x {t.get('layers', '?')}",
            str(v.get("image_size", "?")),
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
