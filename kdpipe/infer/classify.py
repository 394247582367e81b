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
from typing import Any, Callable

import torch

from kdpipe.errors import KdpipeError
from kdpipe.progress import Progress
from kdpipe.infer.index import ClassIndex
from kdpipe.dist import rank_world
from kdpipe.infer.ranks import classify_ranked
from kdpipe.infer.sources import ImageSource
from kdpipe.infer.writers import ResultWriter, Row, skipped_path


@dataclass
class Encoder:
    """An image encoder with what classify needs around it."""

    fn: Callable[[torch.Tensor], torch.Tensor]  # images on the device -> [B, D] normalised features
    transform: Callable  # PIL image -> [3, H, W] tensor (runs in the DataLoader workers)
    model: dict[str, Any]  # identity recorded in outputs: {"id": stable hash, "name": ..., ...}

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

    @property
    def images_per_s(self) -> float:
        return self.rows_new / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"classified {self.rows_new} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) from {self.source}"]
        if self.resumed:
            out.append(f"resumed: {self.resumed} images were already done and were not redone")
        out.append(f"{self.out}: {self.rows_total} rows")
        if self.skipped_total:
            out.append(f"skipped {self.skipped_total} unreadable images ({len(self.skipped_new)} new), listed in {skipped_path(self.out)}")
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
    amp: bool = True,
) -> ClassifySummary:
    """Classify every image of ``source`` not yet in ``out``; returns what was done.

    ``transform`` and ``model`` default to ``encoder.transform`` / ``encoder.model`` (an
    :class:`Encoder` carries both). The encoder must already live on ``device``.
    """
    from kdpipe.train.device import autocast, pick_device

    transform = transform or getattr(encoder, "transform", None)
    if transform is None:
        raise KdpipeError("classify needs the encoder's preprocessing: pass transform= or an Encoder")
    if len(classnames) != class_index.ntotal:
        raise KdpipeError(f"{len(classnames)} class names but the class index holds {class_index.ntotal} classes; they must come from the same model")
    if batch_size < 1 or workers < 0 or top_k < 1:
        raise KdpipeError(f"batch size and top-k must be >= 1 and workers >= 0 (got {batch_size}, {top_k}, {workers})")
    top_k = min(top_k, class_index.ntotal)
    dev = pick_device(device)
    model = model or getattr(encoder, "model", None) or fallback_identity(class_index, classnames, type(encoder).__name__)
    writer_args = {"key_column": source.key_column, "top_k": top_k, "model": model,
                   "extra_meta": {"classes": len(classnames), "index": class_index.kind}}
    rank, world = rank_world()

    def run(writer: ResultWriter, done: set[str]) -> ClassifySummary:
        total = source.count()
        todo = None if total is None or world > 1 else max(0, total - len(done & _count_keys(source)))
        # a bar on a terminal, a line with images/s and ETA every few seconds in a log
        bar = Progress(todo, f"classify {Path(out).name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
                       unit="image", quiet=not progress)
        start = time.perf_counter()
        with torch.inference_mode(), bar:
            for batch in source.batches(transform, batch_size, workers, done, pin_memory=dev.type == "cuda", rank=rank, world=world):
                rows = []
                if batch.images is not None and batch.keys:
                    with autocast(dev, enabled=amp):
                        feats = encoder(batch.images.to(dev, non_blocking=True))
                    scores, ids = class_index.search(feats.float(), top_k)
                    rows = [_row(k, s, i, classnames) for k, s, i in zip(batch.keys, scores.tolist(), ids.tolist())]
                writer.append(rows, batch.skipped)
                seen = len(batch.keys) + len(batch.skipped)
                bar.update(seen, images=seen)
        writer.close()
        return ClassifySummary(
            out=writer.out, source=source.describe(), rows_total=len(writer.rows_done) + writer.written,
            rows_new=writer.written, resumed=writer.resumed, skipped_new=writer.newly_skipped,
            skipped_total=len(writer.skipped_done) + len(writer.newly_skipped), seconds=time.perf_counter() - start,
        )

    if world > 1:
        return classify_ranked(run, Path(out), writer_args, overwrite, rank, world)
    writer = ResultWriter(out, overwrite=overwrite, **writer_args)
    return run(writer, writer.done)


def _count_keys(source: ImageSource) -> set[str]:
    entries = getattr(source, "entries", None)
    return {k for k, _ in entries} if entries is not None else set()


def _row(key: str, scores: list[float], ids: list[int], classnames: list[str]) -> Row:
    keep = [j for j, i in enumerate(ids) if i >= 0]  # approximate indexes may find fewer than k
    return Row(key, [classnames[ids[j]] for j in keep], [round(scores[j], 6) for j in keep], [ids[j] for j in keep])
