"""The classify engine: images -> encoder -> class index -> one result row per image.

Any model can classify: ``encoder(images) -> [B, D]`` L2-normalised features (the distilled
student, the teacher, a baseline method), a :class:`ClassIndex` over the matching class features,
and the class names. Decoding runs in DataLoader workers while the model runs here; each batch is
appended durably before the next, so a killed run resumes where it stopped (see ``writers``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kdpipe.errors import KdpipeError
from kdpipe.pipeline.lock import OutputLock
from kdpipe.progress import Progress
from kdpipe.infer import embeddings as emb_files
from kdpipe.infer.device_decode import decoded_ahead
from kdpipe.infer.index import ClassIndex
from kdpipe.dist import Ranks, rank_world
from kdpipe.infer.ranks import classify_ranked, settle
from kdpipe.infer.shard_meta import ShardMeta, meta_columns
from kdpipe.infer.sources import ImageSource
from kdpipe.infer.writers import RESULT_COLUMNS, ResultWriter, Row, part_path, part_paths, remove_output, skipped_path

DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained scale, for encoders that bring none (the CLI passes the model's)
SCORE_DECIMALS = 6  # cosines are written with 6 decimals; probs are computed from those


@dataclass
class Encoder:
    """An image encoder with what classify needs around it."""

    fn: Callable[[torch.Tensor], torch.Tensor]  # images on the device -> [B, D] normalised features
    transform: Callable  # PIL image -> [3, H, W] tensor (runs in the DataLoader workers)
    model: dict[str, Any]  # identity recorded in outputs: {"id": stable hash, "name": ..., ...}
    precision: str | None = None  # the tower's weights' precision (infer.precision); None: recorded as fp32

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


@dataclass
class ClassifySummary:
    out: Path
    source: str
    rows_total: int  # rows in the output now
    rows_new: int  # rows written by this run
    resumed: int  # images found already done (rows + skipped) when this run started
    skipped_new: list[tuple[str, str]] = field(default_factory=list)
    skipped_total: int = 0
    seconds: float = 0.0
    parts: list[Path] = field(default_factory=list)  # --parts files left beside OUT (not merged)
    precision: str = ""  # the image tower's (recorded in the output's meta too)

    def add(self, other: "ClassifySummary") -> "ClassifySummary":
        """This summary plus another part's (``--parts``)."""
        self.rows_total += other.rows_total
        self.rows_new += other.rows_new
        self.resumed += other.resumed
        self.skipped_new += other.skipped_new
        self.skipped_total += other.skipped_total
        self.seconds += other.seconds
        return self

    @property
    def images_per_s(self) -> float:
        return self.rows_new / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        how = f", {self.precision}" if self.precision else ""
        out = [f"classified {self.rows_new} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s{how}) from {self.source}"]
        if self.resumed:
            out.append(f"resumed: {self.resumed} images were already done and were not redone")
        where = f"{len(self.parts)} parts {self.parts[0].name} ..." if self.parts else str(self.out)
        out.append(f"{where}: {self.rows_total} rows")
        if self.skipped_total:
            listed = "each part's .skipped.jsonl" if self.parts else skipped_path(self.out)
            out.append(f"skipped {self.skipped_total} unreadable images ({len(self.skipped_new)} new), listed in {listed}")
            for key, why in self.skipped_new[:3]:
                out.append(f"  {key}: {why}")
        return out


def fallback_identity(class_index: ClassIndex, classnames: list[str], name: str) -> dict[str, Any]:
    """An identity for encoders that bring none: the class features and names (weaker than a model hash)."""
    h = hashlib.sha256()
    h.update(class_index.features.numpy().tobytes())
    h.update("\n".join(classnames).encode())
    return {"id": h.hexdigest(), "name": name}


def classify(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    class_index: ClassIndex,
    classnames: list[str],
    source: ImageSource,
    out: str | Path,
    top_k: int = 5,
    batch_size: int = 256,
    workers: int = 4,
    device: str | torch.device = "auto",
    progress: bool = True,
    *,
    transform: Callable | None = None,
    model: dict[str, Any] | None = None,
    overwrite: bool = False,
    logit_scale: float | None = None,
    embeddings: str | Path | None = None,
    keep_meta: Sequence[str] = (),
    parts: int = 1,
    merge: bool = False,
) -> ClassifySummary:
    """Classify every image of ``source`` not yet in ``out``; returns what was done.

    ``transform`` and ``model`` default to ``encoder.transform`` / ``encoder.model`` (an
    :class:`Encoder` carries both). The encoder must already live on ``device``.
    ``logit_scale`` turns cosine scores into ``probs`` (softmax over all classes; default
    ``encoder.logit_scale``, else CLIP's 100). ``embeddings``: a folder for the image embeddings
    (see ``kdpipe.infer.embeddings``). ``keep_meta``: shard members kept as columns (see
    ``shard_meta``). ``parts``: N output files (``writers.part_path``), each image in exactly one;
    ``merge`` merges them into ``out`` once all are done. The encoder runs as it is, without
    autocast (a :class:`ClassModel`'s in its ``precision``, which the output's meta records).
    """
    from kdpipe.train.device import pick_device

    transform = transform or getattr(encoder, "transform", None)
    if transform is None:
        raise KdpipeError("classify needs the encoder's preprocessing: pass transform= or an Encoder")
    # a transform that reads bytes (device_decode.EncodedImage) finishes each batch on the device
    on_device = getattr(transform, "on_device", None) if getattr(transform, "reads_bytes", False) else None
    if len(classnames) != class_index.ntotal:
        raise KdpipeError(f"{len(classnames)} class names but the class index holds {class_index.ntotal} classes; they must come from the same model")
    if batch_size < 1 or workers < 0 or top_k < 1:
        raise KdpipeError(f"batch size and top-k must be >= 1 and workers >= 0 (got {batch_size}, {top_k}, {workers})")
    top_k = min(top_k, class_index.ntotal)
    dev = pick_device(device)
    model = model or getattr(encoder, "model", None) or fallback_identity(class_index, classnames, type(encoder).__name__)
    if parts < 1:
        raise KdpipeError(f"--parts must be at least 1, got {parts}")
    scale = float(logit_scale or getattr(encoder, "logit_scale", None) or DEFAULT_LOGIT_SCALE)
    columns = _keep_meta_columns(source, keep_meta)
    # weights prepared in a precision (bf16, int8) run as they are; nothing calls classify with an
    # encoder that has none but tests' plain fp32 callables
    used = getattr(encoder, "precision", None) or "fp32"
    writer_args = {"key_column": source.key_column, "top_k": top_k, "model": model, "extra_columns": columns,
                   "extra_meta": {"classes": len(classnames), "index": class_index.kind, "logit_scale": scale, "precision": used}}
    rank, world = rank_world()

    def run(writer: ResultWriter, done: set[str], share: tuple[int, int] = (rank, world), name: str = "") -> ClassifySummary:
        emb = emb_files.EmbeddingWriter(Path(embeddings), name or "part") if embeddings is not None else None
        # images with a row but no embedding yet (a kill lost their chunk) are encoded again, for the embedding only
        source_done = done if emb is None else (done & emb.done) | writer.skipped_done
        meta = ShardMeta(source.shards[share[0]::share[1]], columns[1:], 2 * (workers + 1)) if columns else None
        total = source.count()
        todo = None if total is None or share[1] > 1 else max(0, total - len(source_done & _count_keys(source)))
        # a bar on a terminal, a line with images/s and ETA every few seconds in a log
        bar = Progress(todo, f"classify {Path(out).name}" + (f" [{name}]" if name else ""),
                       unit="image", quiet=not progress)
        start = time.perf_counter()
        read = already = 0  # images the source gave this run; of them, done before it started
        with torch.inference_mode(), bar:
            batches = source.batches(transform, batch_size, workers, source_done, pin_memory=dev.type == "cuda",
                                     rank=share[0], world=share[1])
            # --decode gpu|cpu on CUDA: decoded (or normalised) on the device, the next batch ahead
            ahead = decoded_ahead(batches, on_device, dev) if on_device is not None else ((b, None) for b in batches)
            for batch, decoded in ahead:
                rows, feats = [], None
                images, keys, skipped = batch.images, batch.keys, list(batch.skipped)
                if decoded is not None:
                    images, keys, bad = decoded
                    skipped += bad
                if images is not None and keys:
                    feats = encoder(images.to(dev, non_blocking=True)).float()
                    rows = result_rows(keys, feats, class_index, top_k, classnames, scale, meta)
                rows, skipped = _storable(rows, skipped, emb is not None)
                have = writer.append(rows, skipped)
                if emb is not None and feats is not None:
                    keep = [i for i, k in enumerate(keys) if k in have]
                    emb.append([keys[i] for i in keep], feats[keep])
                seen = len(batch.keys) + len(batch.skipped)
                read += seen
                already += sum(k in done for k in batch.keys) + sum(k in done for k, _ in batch.skipped)
                bar.update(seen, images=seen)
        if emb is not None:
            emb.flush()
        writer.close()
        check_accounted(writer, read, already)
        return ClassifySummary(
            out=writer.out, source=source.describe(), rows_total=writer.rows_resumed + writer.written,
            rows_new=writer.written, resumed=writer.resumed, skipped_new=writer.newly_skipped,
            skipped_total=len(writer.skipped_done) + len(writer.newly_skipped), seconds=time.perf_counter() - start,
            precision=used,
        )

    ranks = Ranks()
    lock, error = OutputLock(Path(out)), None
    try:
        if rank == 0:  # rank 0 owns OUT; the other ranks write parts it manages
            try:
                lock.__enter__()
            except KdpipeError as e:
                error = e
        settle(ranks, error)
        if embeddings is not None:
            error = None
            if rank == 0:  # once, before any process writes there
                try:
                    emb_files.prepare(embeddings, model, class_index.dim, source.key_column, overwrite)
                except Exception as e:  # noqa: BLE001  (re-raised by settle, after telling the others)
                    error = e
            settle(ranks, error)
        if parts > 1:
            return _classify_parts(run, Path(out), writer_args, overwrite, parts, merge, ranks)
        if world > 1:
            return classify_ranked(lambda w, d: run(w, d, name=f"rank-{rank}"), Path(out), writer_args, overwrite, rank, world)
        writer = ResultWriter(out, overwrite=overwrite, **writer_args)
        # what was done as the run starts, apart from the writer's growing set: an image dropped as
        # "done" because another image of this run had its key would otherwise vanish unnoticed
        return run(writer, frozenset(writer.done))
    finally:
        lock.__exit__(None, None, None)
        ranks.close()


def _classify_parts(run, out: Path, writer_args: dict[str, Any], overwrite: bool, parts: int, merge: bool, ranks: Ranks) -> ClassifySummary:
    """``--parts N``: part p holds the images process p of N would take under torchrun (see
    ``ImageSource.batches``), so each image lands in exactly one part; each part is an output of its
    own (meta, skipped list, resumable). Under torchrun, rank r writes parts r, r + world, ...
    ``merge``: rank 0 merges the parts into ``out`` once every part is done."""
    paths = [part_path(out, p, parts) for p in range(parts)]
    main, error = None, None
    if ranks.leader:
        try:
            _check_part_count(out, parts, overwrite)
            if merge:  # opened first: its identity check, and what an earlier merge already holds
                main = ResultWriter(out, overwrite=overwrite, **writer_args)
        except Exception as e:  # noqa: BLE001  (re-raised by settle, after telling the others)
            error = e
    settle(ranks, error)
    merged = set(ranks.share(sorted(main.done) if main is not None else [])) if merge else set()
    summary, error = None, None
    try:
        for p in range(ranks.rank, parts, ranks.world):
            writer = ResultWriter(paths[p], overwrite=overwrite, **writer_args)
            writer.done |= merged
            s = run(writer, frozenset(writer.done), (p, parts), f"part-{p:05d}-of-{parts:05d}")
            summary = s if summary is None else summary.add(s)
    except Exception as e:  # noqa: BLE001
        error = e
    settle(ranks, error)
    summary = summary or ClassifySummary(out=out, source="", rows_total=0, rows_new=0, resumed=0)
    if main is not None:
        main.merge(paths)
        summary.out, summary.rows_total = out, main.rows_resumed + main.written
        summary.skipped_total = len(main.skipped_done) + len(main.newly_skipped)
    elif not merge:
        summary.parts = paths
    return summary


def _check_part_count(out: Path, parts: int, overwrite: bool) -> None:
    """Parts of another count beside ``out`` would hold the same images: refuse, or remove them with --overwrite."""
    for count, found in part_paths(out).items():
        if count == parts:
            continue
        if not overwrite:
            raise KdpipeError(f"{out} already has {count} parts ({found[0].name} ...); resume with --parts {count}, or pass --overwrite")
        for p in found:
            remove_output(p)


def check_accounted(writer: ResultWriter, read: int, already: int) -> None:
    """Every image read this run has a new row or skipped entry, or was done before; else fail loudly.

    The writer keeps one row per key, so two images under one key would silently lose one.
    """
    written = writer.written + len(writer.newly_skipped)
    if written + already != read:
        raise KdpipeError(
            f"{writer.out}: {read} images read but {written} written ({writer.written} rows, {len(writer.newly_skipped)} skipped) "
            f"and {already} already done: {read - written - already} images share a key with another, so the input's keys are not unique"
        )


def _count_keys(source: ImageSource) -> set[str]:
    entries = getattr(source, "entries", None)
    return {k for k, _ in entries} if entries is not None else set()


def _keep_meta_columns(source: ImageSource, keep_meta: Sequence[str]) -> list[str]:
    if not keep_meta:
        return []
    if not hasattr(source, "shards"):
        raise KdpipeError(f"--keep-meta applies to shard inputs; {source.describe()} has no sample members (its key is the path)")
    return meta_columns(list(keep_meta), {source.key_column, *RESULT_COLUMNS})


def result_rows(keys: list[str], feats: torch.Tensor, index: ClassIndex, top_k: int, classnames: list[str], scale: float,
          meta: ShardMeta | None) -> list[Row]:
    """Result rows: top-k by cosine, and the softmax over ALL classes at ``scale`` for those k (also
    what ``ray_data.BundleClassifier`` returns, so both give the same numbers)."""
    # probs from the cosines as written (rounded), over all classes, not the index's candidates:
    # a function of the stored scores that does not move with the batch an image shares
    scores, ids, lse = index.search_logsumexp(feats, top_k, scale, SCORE_DECIMALS)
    cos = torch.round(scores.double(), decimals=SCORE_DECIMALS)
    probs = torch.exp(scale * cos - lse[:, None])
    rows = []
    for key, s, p, i in zip(keys, cos.tolist(), probs.tolist(), ids.tolist()):
        keep = [j for j, c in enumerate(i) if c >= 0]  # approximate indexes may find fewer than k
        rows.append(Row(key, [classnames[i[j]] for j in keep], [round(s[j], SCORE_DECIMALS) for j in keep], [i[j] for j in keep],
                        [float(f"{p[j]:.6g}") for j in keep], meta.get(key) if meta is not None else None))
    return rows


def _storable(rows: list[Row], skipped: list[tuple[str, str]], embeddings: bool) -> tuple[list[Row], list[tuple[str, str]]]:
    """With ``--embeddings``, keys the keys files cannot hold become skipped entries, so rows and embeddings match."""
    if not embeddings:
        return rows, skipped
    bad = [(r.key, emb_files.unstorable(r.key)) for r in rows if emb_files.unstorable(r.key)]
    return [r for r in rows if not emb_files.unstorable(r.key)], list(skipped) + bad
