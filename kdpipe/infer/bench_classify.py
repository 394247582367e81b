"""``kdpipe bench classify``: end-to-end ``classify`` against the model alone, in one run.

Baseline: open_clip's own ``encode_image`` on batches decoded and preprocessed beforehand, i.e. the
model's speed and nothing else. Measured: ``classify`` over the same images as JPEG files and as
webdataset shards (written by ``kdpipe shards write``), with its decoding workers, index search and
output writing. The ratio is baseline time / classify time: 1.0 means the pipeline costs nothing
beyond the model. Where the time goes: decode, preprocess, model, search and write, each timed on
its own in this process on up to 256 distinct photos and scaled to all images (in ``classify``
decoding and preprocessing run in workers beside the model); the images past 256 are copies. On a
CUDA device classify also runs as ``kdpipe classify`` does there (``--decode cpu``: PIL workers
ship uint8 pixels; ``--decode gpu``: nvJPEG), and every model call runs under classify's autocast.

The model is zero-shot CLIP on the backbone (its image encoder is ``encode_image`` block by block),
with random unit class features: the weights do not change the timing, and no text pass is needed.
classify runs it in ``precision`` (default ``auto``, as ``kdpipe classify`` does; compiled where that
pays, the compile time included); the baseline stays open_clip's fp32 ``encode_image`` (under
autocast on CUDA). Shards are written as ``kdpipe shards write`` writes them (shorter side <= 256);
``resized=N`` adds shards pre-resized to N (``shards write --resize N``) against the full-size files.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdpipe.progress import format_duration


@dataclass
class ClassifyBench:
    images: int
    classes: int
    batch: int
    workers: int
    device: str
    torch_threads: int
    baseline_s: float  # open_clip encode_image on preprocessed batches
    files_s: float  # classify from JPEG files, end to end
    shards_s: float  # classify from shards, end to end
    stages_s: dict[str, float]  # decode, preprocess, model, search, write, each alone
    rows: dict[str, int]  # rows each classify run wrote (every image, or the timing is of less work)
    # CUDA only: "files|shards, <decode>" -> seconds with classify's own decode choice (--decode cpu|gpu)
    device_decode_s: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # classify's image tower
    resized: int | None = None  # shards pre-resized to this shorter side (None: not measured)
    resized_s: float | None = None

    @property
    def files_ratio(self) -> float:
        return self.baseline_s / self.files_s

    @property
    def shards_ratio(self) -> float:
        return self.baseline_s / self.shards_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files_ratio": self.files_ratio, "shards_ratio": self.shards_ratio}


def synthetic_photos(folder: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Path]:
    """JPEGs of photo size with smooth colour fields and shapes (they compress and decode like photos)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(count):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([(xx / w) * 255 * a, (yy / h) * 255 * b, np.full_like(xx, 128 * c, dtype=float)], -1)
        img = Image.fromarray((base + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            draw.ellipse((x0, y0, x0 + 60, y0 + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"photo-{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


DISTINCT = 256  # distinct photos; more images are copies of them (as costly to decode, quick to make)


def photo_files(folder: Path, count: int) -> list[Path]:
    """``count`` JPEG files: :func:`synthetic_photos`, copied round-robin past :data:`DISTINCT`."""
    import shutil

    paths = synthetic_photos(folder, min(count, DISTINCT))
    for i in range(len(paths), count):
        paths.append(Path(shutil.copyfile(paths[i % DISTINCT], folder / f"photo-{i:05d}.jpg")))
    return paths


def _batches(tensors: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    return [torch.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]


def timed(fn) -> tuple[Any, float]:
    """``(fn(), seconds)``, the GPU's queued work included."""
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()  # GPU work is asynchronous: the time is the work's, not its launch's
    return out, time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def zero_shot_model(spec: str, names: list[str], feats: torch.Tensor | str, precision: str, dev: torch.device):
    """Zero-shot CLIP on ``spec`` in ``precision``, a fresh load (preparing a precision changes the
    tower in place); ``feats``: class features, or "zero-shot" (its own text tower's, fp32:
    precision is image-side only) or "random" (unit rows, seed 0)."""
    from kdpipe.clip import load_backbone
    from kdpipe.infer.bundle import ClassModel
    from kdpipe.methods import build_method

    backbone = load_backbone(spec, device=dev)
    method = build_method("zeroshot", backbone, names).to(dev).eval()
    if isinstance(feats, str) and feats == "zero-shot":
        with torch.no_grad():
            feats = method.class_features().float().cpu()
    elif isinstance(feats, str) and feats == "random":
        feats = F.normalize(torch.randn(len(names), backbone.dims.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    return ClassModel(method, names, feats, backbone.dims.logit_scale, source=f"bench {spec}",
                      provenance={"backbone": spec}).set_precision(precision, dev)


def bench_classify(backbone_spec: str, images: int, classes: int, batch: int, top_k: int, workers: int,
                   device: str, progress=None, precision: str = "auto", compile: bool = True, resized: int | None = None) -> ClassifyBench:
    from kdpipe.data.images import load_rgb
    from kdpipe.data.shards import write_shards
    from kdpipe.infer.classify import classify
    from kdpipe.infer.device_decode import for_device
    from kdpipe.infer.sources import open_source
    from kdpipe.infer.writers import ResultWriter, Row
    from kdpipe.train.device import autocast

    say = progress or (lambda msg: None)
    dev = torch.device(device)
    names = [f"class {i}" for i in range(classes)]
    model = zero_shot_model(backbone_spec, names, "random", "fp32", dev)
    index, transform = model.index("flat", dev), model.transform()
    # the baseline keeps fp32 weights: the precision's tower is a model of its own (prepared in place)
    tuned = zero_shot_model(backbone_spec, names, model.class_features, precision, dev)
    encoder = tuned.encoder(compile, batch, say)

    with tempfile.TemporaryDirectory(prefix="kdpipe-bench-classify-") as tmp:
        tmp = Path(tmp)
        say(f"writing {images} JPEGs and their shards")
        paths = photo_files(tmp / "photos", images)
        # at least two shards per worker: a shard is read by one worker, so fewer would idle workers
        per_shard = max(1, images // max(4, 2 * workers))
        write_shards([str(p) for p in paths], tmp / "shards", per_shard=per_shard)
        shard_pattern = str(tmp / "shards" / "*.tar")
        if resized:
            write_shards([str(p) for p in paths], tmp / "resized", per_shard=per_shard, max_side=resized)

        # each stage alone, on the distinct photos (scaled to all images), one process
        sample = paths[:DISTINCT]
        scale = images / len(sample)
        say("timing each stage alone")
        decoded, t_decode = timed(lambda: [load_rgb(p) for p in sample])
        tensors, t_pre = timed(lambda: [transform(img) for img in decoded])
        distinct = _batches(tensors, batch)
        batches = [distinct[i % len(distinct)] for i in range(-(-images // batch))]  # as many images as classify sees
        # the model in its precision, as classify runs it (no autocast); the baseline under the
        # autocast classify used before precisions (bf16/fp16 on CUDA, none on the CPU)
        with torch.inference_mode():
            encoder(batches[0].to(dev))  # warm-up: thread pools, allocations, torch.compile
            out, t_model = timed(lambda: [encoder(b.to(dev)) for b in batches])
            _, t_search = timed(lambda: [index.search(f.float(), top_k) for f in out])
        with torch.inference_mode(), autocast(dev):
            clip = model.method.backbone.model
            clip.encode_image(batches[0].to(dev))
            _, t_base = timed(lambda: [clip.encode_image(b.to(dev)) for b in batches])
        t_decode, t_pre = t_decode * scale, t_pre * scale
        rows = [Row(str(p), names[:top_k], [0.5] * top_k, list(range(top_k))) for p in paths]
        writer = ResultWriter(tmp / "write.jsonl", key_column="path", top_k=top_k, model=model.identity())
        _, t_write = timed(lambda: (writer.append(rows, []), writer.close()))

        def run(spec: str, out: str, decode: str | None = None) -> tuple[int, float]:
            tf = for_device(transform, decode, dev) if decode else transform  # None: float tensors from PIL workers
            summary, seconds = timed(lambda: classify(encoder, index, names, open_source(spec), tmp / out, top_k=top_k,
                                                       batch_size=batch, workers=workers, device=dev, progress=False,
                                                       transform=tf))
            return summary.rows_total, seconds

        say("classify from JPEG files")
        rows_files, t_files = run(str(tmp / "photos"), "files.jsonl")
        say("classify from shards")
        rows_shards, t_shards = run(shard_pattern, "shards.jsonl")
        rows, device_decode, t_resized = {"files": rows_files, "shards": rows_shards}, {}, None
        if resized:
            say(f"classify from shards pre-resized to {resized}")
            rows["resized"], t_resized = run(str(tmp / "resized" / "*.tar"), "resized.jsonl")
        if dev.type == "cuda":
            for name, spec in (("files", str(tmp / "photos")), ("shards", shard_pattern)):
                for decode in ("cpu", "gpu"):
                    key = f"{name}, --decode {decode}"
                    say(f"classify from {key}")
                    rows[key], device_decode[key] = run(spec, f"{name}-{decode}.jsonl", decode)

    return ClassifyBench(
        images=images, classes=classes, batch=batch, workers=workers, device=str(dev), torch_threads=torch.get_num_threads(),
        baseline_s=t_base, files_s=t_files, shards_s=t_shards,
        stages_s={"decode": t_decode, "preprocess": t_pre, "model": t_model, "search": t_search, "write": t_write},
        rows=rows, device_decode_s=device_decode, precision=tuned.precision, resized=resized, resized_s=t_resized,
    )


def summary_lines(res: ClassifyBench) -> list[str]:
    ips = lambda s: res.images / s if s > 0 else float("inf")  # noqa: E731
    lines = [
        f"open_clip encode_image alone: {format_duration(res.baseline_s)} ({ips(res.baseline_s):.1f} img/s)",
        f"classify from JPEG files:     {format_duration(res.files_s)} ({ips(res.files_s):.1f} img/s) = {res.files_ratio:.2f}x the model alone",
        f"classify from shards:         {format_duration(res.shards_s)} ({ips(res.shards_s):.1f} img/s) = {res.shards_ratio:.2f}x the model alone",
    ]
    if res.resized_s:
        lines.append(f"classify from shards <= {res.resized} px: {format_duration(res.resized_s)} ({ips(res.resized_s):.1f} img/s) = "
                     f"{res.baseline_s / res.resized_s:.2f}x the model alone")
    for name, seconds in res.device_decode_s.items():
        lines.append(f"classify from {name + ':':<22} {format_duration(seconds)} ({ips(seconds):.1f} img/s) = "
                     f"{res.baseline_s / seconds:.2f}x the model alone")
    total = sum(res.stages_s.values())
    parts = ", ".join(f"{k} {v:.2f}s ({100 * v / total:.0f}%)" for k, v in res.stages_s.items())
    return lines + [f"each stage alone, one process: {parts}"]
