"""``kdpipe bench classify --precision fp32,bf16,int8``: speed and agreement of each inference precision.

Speed: per precision, classify's model step (the image tower in that precision, then the search
over the class index) on preprocessed batches of the synthetic photos, beside open_clip's fp32
``encode_image`` on the same batches, in interleaved rounds (every variant once per round, so a
busy machine slows all alike); medians; ratio = baseline time / precision time.

Agreement with fp32, as top-1 agreement and max |Δprob| (probs: softmax over all classes at the
model's logit scale, what ``classify`` writes):
  (a) the demo world's shifted test split (3,200 renders, 64 classes) through the pretrained
      world-b CLIP zero-shot: real trained weights. They come from the world cache
      (``$KDPIPE_CACHE``, else ~/.cache/kdpipe); if missing, world-b is pretrained (~3 min) first;
  (b) the synthetic photos through the benchmarked backbone with random unit class features.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F


def agreement(reference: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """``(share of rows whose top-1 class equals the reference's, max |probs - reference|)`` for
    ``[N, C]`` probabilities of the same images."""
    if reference.shape != probs.shape or reference.dim() != 2 or len(reference) == 0:
        raise ValueError(f"agreement needs two [N, C] tensors of one shape, got {tuple(reference.shape)} and {tuple(probs.shape)}")
    same = (reference.argmax(-1) == probs.argmax(-1)).double().mean().item()
    return same, (reference.double() - probs.double()).abs().max().item()


@dataclass
class PrecisionBench:
    backbone: str
    device: str
    batch: int
    images: int
    classes: int
    rounds: int
    torch_threads: int
    baseline_s: list[float]  # open_clip fp32 encode_image over all batches, per round
    times_s: dict[str, list[float]]  # precision -> seconds over all batches, per round
    compiled: dict[str, str]  # precision -> "compiled in N s" or why it was not
    photos: dict[str, tuple[float, float]]  # precision -> (top-1 agreement, max |dprob|) on the photos
    world: dict[str, tuple[float, float]] = field(default_factory=dict)  # the same on the demo world
    world_images: int = 0
    world_weights: str = ""

    def images_per_s(self, seconds: list[float]) -> float:
        return self.images / statistics.median(seconds)

    def ratio(self, name: str) -> float:
        return statistics.median(self.baseline_s) / statistics.median(self.times_s[name])

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "baseline_images_per_s": self.images_per_s(self.baseline_s),
                "images_per_s": {n: self.images_per_s(t) for n, t in self.times_s.items()},
                "ratio": {n: self.ratio(n) for n in self.times_s}}


def _probs(cm, batches: list[torch.Tensor], fn=None) -> torch.Tensor:
    fn = fn or cm.method.encode_images
    feats = torch.cat([fn(b).float().cpu() for b in batches])
    return torch.softmax(cm.logit_scale * F.normalize(feats, dim=-1) @ cm.class_features.T, dim=-1)


def world_agreement(precisions: list[str], dev: torch.device, say: Callable[[str], None]) -> tuple[dict, int, str]:
    """Agreement of each precision with fp32 on the demo world's shifted test split (world-b zero-shot)."""
    from kdpipe.data.images import load_rgb
    from kdpipe.infer.bench_classify import zero_shot_model
    from kdpipe.io import read_json
    from kdpipe.world import CLASSNAMES, SPLIT_FILE, cached_pretrain, pretrain, write_world_dataset

    hit = cached_pretrain("world-b", None)
    if hit is None:
        say("world-b is not in the world cache: pretraining it (~3 min on an idle 2-core machine, cached after)")
    weights = (hit or pretrain("world-b", None, progress=True)).path
    with tempfile.TemporaryDirectory(prefix="kdpipe-bench-world-") as tmp:
        say("rendering the demo world's shifted test split")
        # each split has its own random stream: the test split is the demo's whatever train/val hold
        folder = write_world_dataset(tmp, per_class={"train": 1, "val": 1})
        test = read_json(folder / SPLIT_FILE)["test"]
        ref = zero_shot_model(str(weights), list(CLASSNAMES), "zero-shot", "fp32", dev)
        tf = ref.transform()
        images = torch.stack([tf(load_rgb(folder / "images" / rel)) for rel, _, _ in test])
    batches = list(images.to(dev).split(256))
    out = {}
    with torch.inference_mode():
        want = _probs(ref, batches)
        for name in precisions:
            cm = zero_shot_model(str(weights), list(CLASSNAMES), ref.class_features, name, dev)
            out[name] = agreement(want, _probs(cm, batches))
    return out, len(images), str(weights)


def bench_precisions(backbone_spec: str, precisions: list[str], images: int, classes: int, batch: int,
                     rounds: int, device: str, compile: bool = True, world: bool = True,
                     progress: Callable[[str], None] | None = None) -> PrecisionBench:
    """Each of ``precisions`` on ``images`` synthetic photos (``bench_classify.photo_files``)."""
    from kdpipe.data.images import load_rgb
    from kdpipe.infer.bench_classify import photo_files, timed, zero_shot_model
    from kdpipe.infer.compiled import FixedBatch, compile_encoder, skip_reason

    say = progress or (lambda msg: None)
    dev = torch.device(device)
    names = [f"class {i}" for i in range(classes)]
    ref = zero_shot_model(backbone_spec, names, "random", "fp32", dev)
    tf = ref.transform()
    with tempfile.TemporaryDirectory(prefix="kdpipe-bench-precision-") as tmp:
        photos = [tf(load_rgb(p)) for p in photo_files(Path(tmp), images)]
    batches = [torch.stack(photos[i:i + batch]).to(dev) for i in range(0, len(photos), batch)]
    index = ref.index("flat", dev)
    variants: dict[str, Callable[[torch.Tensor], Any]] = {}
    models, compiled = {}, {}
    for name in precisions:
        say(f"preparing {name}")
        cm = ref if name == "fp32" else zero_shot_model(backbone_spec, names, ref.class_features, name, dev)
        fn = compile_encoder(cm.method.encode_images, batch, cm.precision, dev, compile, say)  # as classify compiles it
        if isinstance(fn, FixedBatch):
            with torch.inference_mode():
                _, seconds = timed(lambda: fn(batches[0]))
            compiled[name] = f"compiled in {seconds:.0f} s" if fn.failed is None else f"compile failed: {fn.failed}"
        else:
            compiled[name] = f"eager: {skip_reason(cm.precision, dev, compile)}"
        models[name] = (cm, fn)
        variants[name] = lambda b, fn=fn: index.search(fn(b).float(), 5)
    clip = ref.method.backbone.model
    with torch.inference_mode():
        want = _probs(ref, batches, lambda b: clip.encode_image(b))
        agree = {name: agreement(want, _probs(cm, batches, fn)) for name, (cm, fn) in models.items()}
        for fn in [clip.encode_image, *variants.values()]:  # warm-up: thread pools, allocations
            fn(batches[0])
        base, times = [], {n: [] for n in variants}
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}")
            base.append(timed(lambda: [clip.encode_image(b) for b in batches])[1])
            for name, fn in variants.items():
                times[name].append(timed(lambda fn=fn: [fn(b) for b in batches])[1])
    res = PrecisionBench(backbone_spec, str(dev), batch, sum(len(b) for b in batches), classes, rounds, torch.get_num_threads(),
                         base, times, compiled, agree)
    if world:
        res.world, res.world_images, res.world_weights = world_agreement(precisions, dev, say)
    return res


def summary_lines(res: PrecisionBench) -> list[str]:
    """The table: one row per precision beside the baseline."""
    head = f"{'precision':<10} {'images/s':>9} {'encode_image fp32':>18} {'ratio':>6}  {'top-1 world':>11} {'max|dprob| world':>16}  " \
           f"{'top-1 photos':>12} {'max|dprob| photos':>17}  compile"
    lines = [head]
    base = res.images_per_s(res.baseline_s)
    for name in res.times_s:
        w = res.world.get(name)
        p = res.photos[name]
        lines.append(f"{name:<10} {res.images_per_s(res.times_s[name]):>9.2f} {base:>18.2f} {res.ratio(name):>5.2f}x  "
                     f"{_pct(w[0]) if w else '-':>11} {f'{w[1]:.1e}' if w else '-':>16}  {_pct(p[0]):>12} {p[1]:>17.1e}  {res.compiled[name]}")
    world = f"demo world: {res.world_images} shifted test images, world-b zero-shot ({res.world_weights})" if res.world else "demo world: not measured"
    return lines + [f"photos: {res.images} synthetic JPEGs, {res.classes} random classes; {world}",
                    f"medians of {res.rounds} interleaved rounds; model step = image tower + flat search (top-5)"]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"
