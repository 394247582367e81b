"""``kdpipe classify`` (offline batch classification) and ``kdpipe export`` (a self-contained bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def classify(
    model: Path = typer.Option(..., "--model", "-m", help="a bundle folder (kdpipe export) or a run directory"),
    input_: str = typer.Option(..., "--input", "-i", help="a folder of images, a list (.txt/.csv/.jsonl with a path column) or shards (.tar, brace pattern, pipe:)"),
    out: Path = typer.Option(..., "--out", "-o", help="results: .jsonl, .csv or .parquet (one row per image); re-running resumes. "
                             "Columns: the key (path, or key for shards), labels, scores (cosine similarity), probs (softmax over "
                             "all classes at the model's logit scale), ids; CSV has label_i, score_i, prob_i, id_i"),
    top_k: int = typer.Option(5, "--top-k", help="labels, scores and probs per image"),
    batch_size: int = typer.Option(256, "--batch-size"),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader processes decoding images while the model runs (default: up to 4, at most the cores)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    index: Optional[str] = typer.Option(None, "--index", help="flat (exact), ivf, hnsw, auto (flat below 100k classes, else hnsw) or any "
                                        "FAISS index_factory string ('IVF256,Flat', 'HNSW32', 'IVF1024,PQ32'); default: the model's stored index, else auto"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF indexes: cells visited per image (default max(16, nlist/8))"),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW indexes: candidate list while searching (default 128)"),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="also write the L2-normalised image embeddings to this folder: "
                                              "float16 part-NNNNN.npy + part-NNNNN.keys.txt (the keys in row order); resumable"),
    keep_meta: Optional[str] = typer.Option(None, "--keep-meta", help="shard inputs: sample members to keep as columns, e.g. json,txt "
                                            "(plus __url__); JSON members stay objects in .jsonl, text in .csv/.parquet"),
    parts: int = typer.Option(1, "--parts", help="write N output files OUT_STEM.part-0000p-of-0000N.EXT (each image in exactly one, "
                              "each resumable); under torchrun rank r writes parts r, r+world, ..."),
    merge: bool = typer.Option(False, "--merge", help="with --parts: merge the parts into OUT when all are done (and remove them)"),
    classes: Optional[Path] = typer.Option(None, "--classes", help="a file of class names (one per line) replacing the model's classes"),
    stage: str = typer.Option("student", "--stage", help="run directories: student, teacher or baseline:METHOD"),
    seed: Optional[int] = typer.Option(None, "--seed", help="run directories with several seeds: which one"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an output written by another model or with other settings"),
    precision: Optional[str] = typer.Option(None, "--precision", help="the image tower's precision: auto (the fastest keeping >= 99.5% "
                                            "top-1 agreement with fp32 on the demo world, per device: bf16 on CUDA and on CPUs with bf16 instructions, else fp32), fp32 (exact), bf16, int8 "
                                            "(CPU only; fastest, ~98% agreement). Class features, search and probs stay fp32. Default: the bundle's (kdpipe export "
                                            "--precision), else auto"),
    compile_: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the image encoder at the batch size where that was "
                                  "measured to pay (bf16; costs ~30 s once for ViT-B/16 on a CPU); a log line says when it is skipped. "
                                  "KDPIPE_COMPILE=0 turns it off too"),
    no_amp: bool = typer.Option(False, "--no-amp", hidden=True, help="the same as --precision fp32 (kept for old scripts)"),
    decode: str = typer.Option("auto", "--decode", help="where JPEGs are decoded and preprocessed: cpu (PIL, in the workers), gpu "
                               "(nvJPEG, batched; workers only read bytes) or auto (gpu on a CUDA device)"),
) -> None:
    """Top-k labels for every image of a folder, list or shard set, with a student bundle or a run.

    Under torchrun each process classifies its share of the images (one GPU each); the result is
    the same file a single process writes (or, with --parts, the same part files).
    """
    from kdpipe.errors import KdpipeError
    from kdpipe.infer.classify import classify as run_classify
    from kdpipe.infer.precision import check_name
    from kdpipe.infer.device_decode import for_device
    from kdpipe.dist import default_workers, rank_world
    from kdpipe.infer.runs import load_model
    from kdpipe.infer.sources import open_source
    from kdpipe.train.device import pick_device

    if no_amp and precision not in (None, "fp32"):
        raise KdpipeError(f"--no-amp means --precision fp32; it contradicts --precision {precision}")
    precision = "fp32" if no_amp else precision
    if precision is not None:
        check_name(precision)
    source = open_source(input_)  # first: a typo in --input fails before any model loads
    dev = pick_device(device)  # under torchrun: this rank's own GPU
    rank, _ = rank_world()
    cm = load_model(model, stage, seed, dev)
    if classes is not None:
        cm = cm.with_classes(read_class_file(classes))
    enc = cm.to(dev).set_precision(precision or cm.default_precision, dev).encoder(compile_, batch_size, say=lambda msg: typer.echo(msg, err=True))
    enc.transform = for_device(enc.transform, decode, dev)
    class_index = cm.index(index, dev).set_search(nprobe=nprobe, ef_search=ef_search)
    summary = run_classify(enc, class_index, cm.classnames, source, out, top_k=top_k, batch_size=batch_size,
                           workers=default_workers() if workers is None else workers, device=dev, progress=True, overwrite=overwrite,
                           logit_scale=cm.logit_scale, embeddings=embeddings, parts=parts, merge=merge,
                           keep_meta=[f for f in (keep_meta or "").split(",") if f.strip()])
    if rank == 0:
        for line in summary.lines():
            typer.echo(line)


def export(
    run_dir: Path = typer.Option(..., "--run-dir", help="the run directory holding the finished distill stage"),
    out: Path = typer.Option(..., "--out", "-o", help="the bundle folder to write"),
    stage: str = typer.Option("student", "--stage", help="student (default), teacher or baseline:METHOD"),
    seed: Optional[int] = typer.Option(None, "--seed", help="which seed, when the run has several"),
    index: str = typer.Option("auto", "--index", help="class index stored in the bundle: auto (flat below 100k classes, else hnsw), flat, ivf, hnsw or a FAISS index_factory string"),
    with_teacher_text: bool = typer.Option(False, "--with-teacher-text", help="include the teacher's text side so --classes can add new class names (large: the teacher's weights)"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    precision: str = typer.Option("auto", "--precision", help="the bundle's default inference precision for kdpipe classify: auto, fp32, "
                                  "bf16 or int8 (the weights are stored fp32 whatever it is)"),
) -> None:
    """Write a self-contained bundle: weights, learned prompts + projector, class features, index, preprocessing."""
    from kdpipe.errors import KdpipeError
    from kdpipe.infer.bundle import export_bundle, export_steps
    from kdpipe.infer.precision import check_name
    from kdpipe.infer.runs import load_run
    from kdpipe.io import ensure_dir
    from kdpipe.progress import Progress

    check_name(precision)
    if not run_dir.is_dir():
        raise KdpipeError(f"--run-dir {run_dir} does not exist (give the run directory of a finished `kdpipe run`)")
    if out.exists() and not out.is_dir():
        raise KdpipeError(f"--out {out} is a file; a bundle is a folder: choose another path")
    ensure_dir(out.parent, "the folder of --out")  # before the model loads: a typo fails at once
    steps = export_steps(with_teacher_text)
    # loading the run and writing a ViT-L's weights each take seconds: one bar over all parts
    with Progress(1 + len(steps), "export", unit="part") as bar:
        cm = load_run(run_dir, stage, seed, "cpu")
        bar.update(1, part="model loaded")
        path = export_bundle(cm, out, index_kind=index, with_teacher_text=with_teacher_text, overwrite=overwrite,
                             progress=lambda part: bar.update(1, part=part), precision=precision)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    typer.echo(f"wrote {path} ({size / 2**20:.1f} MiB): {cm.method.name} on {cm.provenance.get('backbone')}, "
               f"{len(cm.classnames)} classes x {cm.dim}{', with the teacher text side' if with_teacher_text else ''}")


def read_class_file(path: Path) -> list[str]:
    from kdpipe.errors import KdpipeError

    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"cannot read --classes {path}: {e}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def register(app: typer.Typer) -> None:
    app.command("classify")(classify)
    app.command("export")(export)
