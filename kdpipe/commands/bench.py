"""``kdpipe bench ...``: speed benchmarks that print ratios against a baseline measured in the same run.

``bench_app`` is a typer sub-app: another command module adds ``kdpipe bench THING`` with
``from kdpipe.commands.bench import bench_app`` and ``@bench_app.command("thing")`` in its ``register``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

bench_app = typer.Typer(help="Benchmarks: each prints ratios against a plain baseline measured in the same run.",
                        no_args_is_help=True)


# the options every bench shares (typer reads an Option object, never changes it: one serves all)
DEVICE_OPTION = typer.Option("cpu", help="cpu, cuda or auto")
JSON_OPTION = typer.Option(None, "--json", help="also write the numbers here")


def _write_json_out(path: Optional[Path], res: dict) -> None:
    if path:
        from kdpipe.io import write_json

        write_json(path, res)


def _print_result(header: str, lines: list[str], json_out: Optional[Path], res: dict) -> None:
    """A bench's plain-text result (a header line, then its lines) and, with --json, its numbers."""
    typer.echo(header)
    for line in lines:
        typer.echo(line)
    _write_json_out(json_out, res)


@bench_app.command("index")
def index(
    classes: str = typer.Option("1000,20000", help="class counts for flat search, comma-separated"),
    approx_classes: int = typer.Option(20000, "--approx-classes", help="class count for the ivf/hnsw comparison"),
    dim: int = typer.Option(768, help="feature dimension (768 = ViT-L/14 teacher text features)"),
    batch: int = typer.Option(256, help="queries per search (the classify batch size)"),
    top_k: int = typer.Option(5, "--top-k"),
    repeats: int = typer.Option(5, help="timed searches per measurement (after one warm-up)"),
    device: str = DEVICE_OPTION,
    kinds: str = typer.Option("ivf,hnsw", help="approximate kinds to compare with flat ('' for none)"),
    json_out: Optional[Path] = JSON_OPTION,
) -> None:
    """Flat search: FAISS IndexFlatIP vs torch matmul+topk; IVF/HNSW: recall and speed vs flat."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.infer.bench import bench_index
    from kdpipe.train.device import pick_device

    sizes = tuple(_int_list(classes, "--classes"))
    dev = str(pick_device(device))
    res = bench_index(sizes, approx_classes, dim, batch, top_k, repeats, dev, tuple(k for k in kinds.split(",") if k.strip()))
    console = Console()
    t = Table(title=f"flat search, {batch} queries x dim {dim}, top-{top_k}, {dev}, faiss {res['faiss'] or 'not installed'}, torch threads {res['torch_threads']}")
    for col in ("classes", "faiss ms", "torch ms", "faiss / torch", "ClassIndex picks", "identical results"):
        t.add_column(col)
    for r in res["flat"]:
        ratio = r["faiss_over_torch"]
        t.add_row(str(r["classes"]), f"{r['faiss_ms']:.2f}" if r["faiss_ms"] is not None else "-", f"{r['torch_ms']:.2f}",
                  f"{ratio:.2f}x" if ratio is not None else "-", r["picked"], "yes" if r["identical"] else "NO")
    console.print(t)
    if res["approx"]:
        t = Table(title=f"approximate kinds at {approx_classes} classes (search = whole ClassIndex.search incl. exact rescoring)")
        for col in ("kind", "build s", "search ms", "flat ms", "speed-up vs flat", "recall@1", f"recall@{top_k}"):
            t.add_column(col)
        for r in res["approx"]:
            t.add_row(r["kind"], f"{r['build_s']:.2f}", f"{r['search_ms']:.2f}", f"{r['flat_ms']:.2f}",
                      f"{r['speedup_vs_flat']:.2f}x", f"{r['recall1']:.3f}", f"{r['recall_k']:.3f}")
        console.print(t)
    _write_json_out(json_out, res)


@bench_app.command("text")
def text(
    backbone: str = typer.Option("ViT-B-16", help="backbone spec (random init when no weights are given: the timing is the same)"),
    classnames: Optional[Path] = typer.Option(None, "--classnames", help="a text file, one class name per line (default: the demo world's 64)"),
    repeats: int = typer.Option(5, help="timed passes per measurement (after one warm-up)"),
    device: str = DEVICE_OPTION,
    json_out: Optional[Path] = JSON_OPTION,
) -> None:
    """Prompted text passes ("X X X X {class}.") trimmed at the last EOT vs the full context length."""
    from rich.console import Console
    from rich.table import Table

    from kdpipe.clip import load_backbone
    from kdpipe.clip.text_bench import bench_text_trim
    from kdpipe.errors import KdpipeError
    from kdpipe.train.device import pick_device
    from kdpipe.world.classes import CLASSNAMES

    if classnames is not None:
        try:
            names = [line.strip() for line in classnames.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as e:
            raise KdpipeError(f"--classnames {classnames}: cannot read it ({e.strerror or e})") from None
        if not names:
            raise KdpipeError(f"--classnames {classnames}: no class names in it (one per line)")
    else:
        names = list(CLASSNAMES)
    res = bench_text_trim(load_backbone(backbone, device=str(pick_device(device))), names, repeats)
    t = Table(title=f"{backbone}: {res['prompts']} prompts, {res['context_length']} -> {res['trimmed_length']} positions, "
                    f"{res['device']}, torch threads {res['torch_threads']}, max |diff| {res['max_abs_diff']:.1e}")
    for col in ("pass", "full ms", "trimmed ms", "speed-up"):
        t.add_column(col)
    for name in ("forward", "train_step"):
        r = res[name]
        t.add_row(name.replace("_", " "), f"{r['full_ms']:.1f}", f"{r['trimmed_ms']:.1f}", f"{r['speedup']:.2f}x")
    Console().print(t)
    _write_json_out(json_out, res)


@bench_app.command("classify")
def classify(
    backbone: str = typer.Option("ViT-B-16", help="backbone spec (random init when no weights are given: the timing is the same)"),
    images: int = typer.Option(256, help="synthetic 500x375 JPEG photos to classify"),
    classes: int = typer.Option(1000, help="classes in the index"),
    batch: int = typer.Option(64, "--batch-size", help="images per model call"),
    top_k: int = typer.Option(5, "--top-k"),
    workers: int = typer.Option(2, help="classify's decoding processes"),
    device: str = DEVICE_OPTION,
    precision: str = typer.Option("", "--precision", help="compare precisions, e.g. fp32,bf16,int8: images/s beside open_clip fp32 "
                                  "encode_image (interleaved rounds), top-1 agreement and max |dprob| vs fp32 on the demo world and the photos"),
    classify_precision: str = typer.Option("auto", "--classify-precision", help="the precision of the end-to-end classify runs"),
    rounds: int = typer.Option(3, help="--precision: interleaved timed rounds"),
    precision_images: int = typer.Option(64, "--precision-images", help="--precision: photos per timed round (and for agreement)"),
    world: bool = typer.Option(True, "--world/--no-world", help="--precision: agreement on the demo world (world-b from the cache; pretrained, ~3 min, if missing)"),
    end_to_end: bool = typer.Option(True, "--end-to-end/--no-end-to-end", help="run classify end to end (files, shards)"),
    resized: Optional[int] = typer.Option(None, "--resized", help="also classify shards written pre-resized (shards write --resize N)"),
    compile_: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile where it was measured to pay, as classify does"),
    json_out: Optional[Path] = JSON_OPTION,
) -> None:
    """End-to-end classify (JPEG files, shards) vs open_clip encode_image on preprocessed batches; with
    --precision, each precision's speed and agreement with fp32."""
    from kdpipe.errors import KdpipeError
    from kdpipe.infer.bench_classify import bench_classify, summary_lines
    from kdpipe.infer.precision import check_name
    from kdpipe.train.device import pick_device

    names = [check_name(p.strip()) for p in precision.split(",") if p.strip()]
    check_name(classify_precision, "--classify-precision")
    if images < 1 or classes < top_k or batch < 1 or workers < 0 or rounds < 1 or precision_images < 1:
        raise KdpipeError("--images, --batch-size, --rounds and --precision-images must be >= 1, --classes >= --top-k, --workers >= 0")
    if not names and not end_to_end:
        raise KdpipeError("nothing to measure: give --precision or leave --end-to-end on")
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    dev = str(pick_device(device))
    out: dict = {}
    if end_to_end:
        res = bench_classify(backbone, images, classes, batch, top_k, workers, dev, progress=say, precision=classify_precision,
                             compile=compile_, resized=resized)
        out = res.as_dict()
        typer.echo(f"{backbone}, {res.images} images, {res.classes} classes, batch {res.batch}, {res.workers} workers, "
                   f"{res.device}, torch threads {res.torch_threads}, classify in {res.precision}")
        for line in summary_lines(res):
            typer.echo(line)
    if names:
        from kdpipe.infer.bench_precision import bench_precisions, summary_lines as precision_lines

        p = bench_precisions(backbone, names, precision_images, classes, batch, rounds, dev, compile_, world, say)
        out["precision"] = p.as_dict()
        typer.echo(f"{backbone}, batch {p.batch}, {p.device}, torch threads {p.torch_threads}: precisions")
        for line in precision_lines(p):
            typer.echo(line)
    _write_json_out(json_out, out)


def _int_list(value: str, option: str) -> list[int]:
    from kdpipe.errors import KdpipeError

    try:
        items = [int(c) for c in value.split(",") if c.strip()]
    except ValueError:
        items = []
    if not items or min(items) < 1:
        raise KdpipeError(f"{option} {value!r}: expected comma-separated positive integers like 50,1000")
    return items


@bench_app.command("distill")
def distill(
    teacher: str = typer.Option("ViT-L-14", help="teacher backbone spec (random init when no weights are given: the timing is the same)"),
    student: str = typer.Option("ViT-B-16", help="student backbone spec"),
    classes: str = typer.Option("10,50", help="class counts for the reference step (its text tower encodes them all every step), comma-separated"),
    batch: int = typer.Option(8, help="images per step (the reference recipe's 8; 256 on a GPU)"),
    rounds: int = typer.Option(3, help="interleaved timed rounds (after one warm-up step of each variant)"),
    device: str = DEVICE_OPTION,
    amp: bool = typer.Option(True, "--amp/--no-amp", help="autocast on CUDA (bf16 where supported), as distill runs; CPU is always fp32"),
    json_out: Optional[Path] = JSON_OPTION,
) -> None:
    """One distillation step: the reference's (teacher image + text towers) vs kdpipe's (stored class
    features), kdpipe's with cached teacher features, and the student alone."""
    from kdpipe.distill.bench import bench_distill, summary_lines
    from kdpipe.errors import KdpipeError
    from kdpipe.train.device import pick_device

    sizes = _int_list(classes, "--classes")
    if batch < 2 or rounds < 1:
        raise KdpipeError("--batch must be >= 2 (the projector's BatchNorm) and --rounds >= 1")
    res = bench_distill(teacher, student, sizes, batch, rounds, str(pick_device(device)), amp,
                        progress=lambda msg: typer.echo(msg, err=True))
    _print_result(f"{teacher} -> {student}, batch {res.batch}, {res.image_size} px, {res.device}, {res.precision}, "
                  f"torch threads {res.torch_threads}, {res.rounds} interleaved rounds", summary_lines(res), json_out, res.as_dict())


@bench_app.command("gpu")
def gpu(
    out: Path = typer.Option(Path("gpu-check"), "--out", "-o", help="folder for gpu-check.json and gpu-check.md"),
    images: int = typer.Option(8192, help="synthetic JPEGs for the classify bench"),
    workers: Optional[int] = typer.Option(None, help="classify's decoding processes (default: cores - 2, at most 16)"),
    rounds: int = typer.Option(3, help="interleaved rounds of the distill bench"),
) -> None:
    """The GPU check, one command: GPU tests (pytest -m gpu), bench distill (ViT-L/14 -> ViT-B/16,
    batch 256) and bench classify (ViT-B/16, PIL and nvJPEG decoding); one table. Needs CUDA and a
    source checkout (the tests)."""
    import os

    from kdpipe.gpu_check import gpu_check

    n = workers if workers is not None else max(1, min(16, (os.cpu_count() or 2) - 2))
    res = gpu_check(out, images, n, rounds, say=lambda msg: typer.echo(msg, err=True))
    typer.echo(res.markdown())
    typer.echo(f"written to {out}/gpu-check.md and gpu-check.json")
    if res.failed:
        raise typer.Exit(1)


@bench_app.command("memory")
def memory(
    images: str = typer.Option("400,4000", help="unlabeled/classified image counts, comma-separated (the ratio is last / first)"),
    workers: int = typer.Option(2, help="DataLoader decoding workers of distill and classify"),
    batch: int = typer.Option(32, help="distill's batch size"),
    cache_views: int = typer.Option(0, "--cache-views", help="distill.cache_views (its cache holds [V, N, D] features: grows with N by design)"),
    json_out: Optional[Path] = JSON_OPTION,
) -> None:
    """Peak RSS of distill and classify over 1x and 10x the images, each in a fresh process: streaming
    keeps it flat (goal: 10x / 1x <= 1.05)."""
    from kdpipe.bench_memory import bench_memory, summary_lines
    from kdpipe.errors import KdpipeError

    if workers < 0 or batch < 2 or cache_views < 0:
        raise KdpipeError("--workers and --cache-views must be >= 0, --batch >= 2 (the projector's BatchNorm)")
    res = bench_memory(_int_list(images, "--images"), workers, batch, cache_views, say=lambda msg: typer.echo(msg, err=True))
    _print_result(f"{res.machine}; {res.workers} workers, distill batch {res.batch}, cache_views {res.cache_views}",
                  summary_lines(res), json_out, res.as_dict())


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
