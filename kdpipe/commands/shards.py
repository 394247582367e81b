"""``kdpipe shards write`` and ``kdpipe shards inspect``: pack images into webdataset shards, check them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

shards_app = typer.Typer(
    help="Pack images into webdataset tar shards for distillation, and inspect shard sets.",
    no_args_is_help=True,
)


def _source_items(source: Path, dataset: Optional[str], split: str, subset: str, classnames: Optional[Path]):
    """(items or paths, class names or None, description) for SOURCE."""
    from kdpipe.data import load_dataset, subsample
    from kdpipe.data.layout import list_images_recursive
    from kdpipe.errors import KdpipeError

    if dataset is None and source.is_file() and source.suffix.lower() in (".csv", ".jsonl"):
        dataset = source.suffix.lower()[1:]
    if dataset is None:
        if not source.is_dir():
            raise KdpipeError(f"{source} is neither a folder of images nor a .csv/.jsonl list; or name its layout with --dataset")
        paths = list_images_recursive(source)
        if not paths:
            raise KdpipeError(f"no images found under {source} (looked recursively for .jpg, .png, .webp, ...)")
        return paths, None, f"folder {source} (unlabeled)"
    opts = {"classnames": classnames} if classnames else {}
    splits = subsample(load_dataset(dataset, source, **opts), subset)
    return splits.split(split), splits.classnames, f"{splits.name} ({split} split, {subset} classes)"


@shards_app.command("write")
def write(
    source: Path = typer.Argument(..., help="folder of images (unlabeled), a .csv/.jsonl list, or a data root with --dataset"),
    out_dir: Path = typer.Argument(..., help="folder for the shards and manifest.json (re-running resumes)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="read SOURCE as this dataset (kdpipe datasets lists them)"),
    split: str = typer.Option("train", help="train, val, test or all (with --dataset)"),
    subset: str = typer.Option("all", help="base, novel or all classes (with --dataset)"),
    per_shard: int = typer.Option(1000, "--per-shard", help="samples per shard"),
    max_side: int = typer.Option(256, "--max-side", "--resize", help="shrink so the shorter side is at most this (aspect kept; 0 = keep sizes)"),
    no_labels: bool = typer.Option(False, "--no-labels", help="store images only (unlabeled distillation data)"),
    classnames: Optional[Path] = typer.Option(None, "--classnames", help="file mapping labels to class names (custom sources)"),
    workers: int = typer.Option(0, "--workers", help="encoding threads (0: up to 8, one per core)"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first unreadable image instead of skipping it"),
    keep_order: bool = typer.Option(False, "--keep-order", help="store images in the source's order (default: shuffled with a fixed seed, so that a stream's shuffle buffer sees every class)"),
) -> None:
    """Pack images into webdataset shards: <key>.jpg/png, plus .cls labels and .json meta when known."""
    import json

    from kdpipe.data.shards import write_shards
    from kdpipe.progress import Progress

    items, names, description = _source_items(source, dataset, split, subset, classnames)
    with Progress(len(items), "shards write", unit="image") as bar:
        manifest_path = write_shards(
            items, out_dir, per_shard=per_shard, max_side=max_side, keep_labels=not no_labels,
            classnames=names, workers=workers or None, strict=strict,
            progress=lambda n: bar.update(n, images=n), source_name=description,
            shuffle_seed=None if keep_order else 0,
        )
    manifest = json.loads(manifest_path.read_text())
    typer.echo(
        f"{manifest['count']} images in {len(manifest['shards'])} shards ({manifest['bytes'] / 1e6:.1f} MB) "
        f"from {description}; manifest: {manifest_path}"
    )
    if manifest["skipped"]:
        typer.echo(f"skipped {len(manifest['skipped'])} unreadable image(s), listed in the manifest, e.g.:", err=True)
        for path, reason in manifest["skipped"][:10]:
            typer.echo(f"  {path}: {reason}", err=True)


@shards_app.command("inspect")
def inspect(
    pattern: str = typer.Argument(..., help="shards: a .tar, brace pattern, glob, folder, or pipe: URL"),
    no_decode: bool = typer.Option(False, "--no-decode", help="only read the archives (faster; misses undecodable images)"),
) -> None:
    """Count samples, classes and bytes per shard, and list every corrupt member (exit 1 when there is one)."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.data.shards import expand_pattern, inspect_shards
    from kdpipe.progress import Progress

    n = len(expand_pattern(pattern))
    with Progress(n, "shards inspect", unit="shard") as bar:
        report = inspect_shards(pattern, decode=not no_decode, progress=bar.update)
    console = Console()
    table = Table(title=f"{n} shards (MB: the samples' members, the same read from a file or through pipe:)")
    for col, justify in (("shard", "left"), ("samples", "right"), ("MB", "right"), ("members", "left"), ("corrupt", "right")):
        table.add_column(col, justify=justify)
    for s in report.shards:
        members = ", ".join(f"{k} {v}" for k, v in sorted(s.extensions.items()))
        table.add_row(Path(s.url).name if "://" not in s.url else s.url, str(s.samples), f"{s.bytes / 1e6:.2f}", members, str(len(s.corrupt)))
    console.print(table)
    classes = f"{len(report.labels)} classes" if report.labels else "no labels"
    console.print(f"total: {report.samples} readable samples, {report.bytes / 1e6:.2f} MB of members, {classes}, {len(report.corrupt)} corrupt")
    if report.labels:
        shown = sorted(report.labels.items())
        text = ", ".join(f"{k}{' ' + repr(report.classnames[k]) if k in report.classnames else ''}: {v}" for k, v in shown[:20])
        console.print(f"per class: {text}{' ...' if len(shown) > 20 else ''}", highlight=False)
    for shard, key, reason in report.corrupt:
        # one line per member, never wrapped: scripts grep these and a cut reason reads as two
        console.print(f"corrupt: {shard} [{key}]: {reason}", highlight=False, markup=False, soft_wrap=True)
    if report.corrupt:
        raise typer.Exit(1)  # a check that found damage must not look like a pass to a script


def register(app: typer.Typer) -> None:
    app.add_typer(shards_app, name="shards")
