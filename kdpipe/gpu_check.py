"""``kdpipe bench gpu``: every GPU figure from one command, sized for a few minutes on one GPU.

1. the GPU tests (``pytest -m gpu`` on the source checkout's ``tests/``): AMP in teacher training,
   distillation and classify, nvJPEG decoding, the class index on the GPU; ``faiss_gpu`` tests only
   where faiss has GPU support and ``multi_gpu`` (NCCL) only with two GPUs or more: each one left
   out is named in the table with the reason;
2. ``bench distill``: the reference-style step vs kdpipe's, ViT-L/14 -> ViT-B/16 at batch 256;
3. ``bench classify``: end to end from synthetic JPEG files and shards (as written, and pre-resized
   to 224), PIL and nvJPEG decoding, in the default precision, against ``encode_image`` alone;
4. ``bench classify --precision fp32,bf16``: model-only images/s per precision (compiled where that
   pays) beside open_clip's fp32 ``encode_image``, with top-1 agreement on the demo world.
Model-only and end-to-end rows give the fraction of the GPU's dense bf16 peak they use: FLOPs per
image from the tower's config (:func:`vit_flops`), the peak from :data:`PEAK_BF16_TFLOPS` by name.
The result is one table on stdout, and ``gpu-check.json`` / ``gpu-check.md`` in ``--out``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; first match
# of the device name wins, so the more specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0),
]


def peak_tflops(name: str) -> float | None:
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def vit_flops(visual) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image through an open_clip ViT image tower, from its
    config: patch embedding, per block the q/k/v/out and MLP matmuls plus attention's two
    [N, N] products, and the projection. ViT-B/16 at 224 px: 35.1 GFLOPs."""
    patch = visual.conv1.kernel_size[0]
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    width = visual.conv1.out_channels
    tokens = (size // patch) ** 2 + 1
    flops = 2 * (tokens - 1) * 3 * patch * patch * width
    for block in visual.transformer.resblocks:
        hidden = block.mlp.c_fc.out_features
        flops += 2 * tokens * (4 * width * width + 2 * width * hidden) + 4 * tokens * tokens * width
    if getattr(visual, "proj", None) is not None:
        flops += 2 * width * visual.proj.shape[1]
    return float(flops)


def share_of_peak(images_per_s: float, flops: float, peak: float | None) -> str:
    return f"{100 * images_per_s * flops / (peak * 1e12):.1f}% of the dense bf16 peak" if peak else "peak unknown for this GPU"


@dataclass
class CheckResult:
    device: str
    versions: dict[str, str]
    tests: dict[str, object] = field(default_factory=dict)
    rows: list[tuple[str, str]] = field(default_factory=list)  # (figure, value) for the table
    failed: bool = False

    def markdown(self) -> str:
        lines = [f"GPU check on {self.device} ({', '.join(f'{k} {v}' for k, v in self.versions.items())})", "",
                 "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.rows]
        return "\n".join(lines) + "\n"


def ips_of(images_per_s: float, flops: float, peak: float | None) -> str:
    return f"{images_per_s:,.0f} images/s, {share_of_peak(images_per_s, flops, peak)}"


def _versions() -> dict[str, str]:
    import torchvision

    from kdpipe.infer.index import faiss_module

    faiss = faiss_module()
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "CUDA": str(torch.version.cuda),
            "faiss": getattr(faiss, "__version__", "not installed") if faiss is not None else "not installed"}


def test_selection() -> tuple[str, list[str]]:
    """The ``-m`` expression for this machine, and why each marker left out was left out."""
    from kdpipe.infer.index import faiss_has_gpu

    expr, left_out = "gpu", []
    if not faiss_has_gpu():
        expr += " and not faiss_gpu"
        left_out.append("faiss_gpu (faiss here has no GPU support)")
    if torch.cuda.device_count() < 2:
        expr += " and not multi_gpu"
        left_out.append(f"multi_gpu (NCCL needs 2 GPUs, this machine has {torch.cuda.device_count()})")
    return expr, left_out


def run_gpu_tests(say: Callable[[str], None]) -> dict[str, object]:
    from kdpipe.errors import KdpipeError

    if not TESTS.is_dir():
        raise KdpipeError(f"the GPU tests live in a source checkout; {TESTS} does not exist (git clone the repository)")
    expr, left_out = test_selection()
    say(f"pytest -m '{expr}'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                           "-m", expr, str(TESTS)],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()
    for line in tail[-40:] if done.returncode else tail[-3:]:
        say(line)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail[-1] if tail else "")}
    return {"expression": expr, "left_out": left_out, "returncode": done.returncode, "counts": counts,
            "seconds": time.perf_counter() - start}


def gpu_check(out: Path, images: int, workers: int, rounds: int, say: Callable[[str], None]) -> CheckResult:
    from kdpipe.distill.bench import bench_distill
    from kdpipe.infer.bench_classify import bench_classify
    from kdpipe.train.device import pick_device

    dev = pick_device("cuda")
    res = CheckResult(device=torch.cuda.get_device_name(dev), versions=_versions())
    tests = run_gpu_tests(say)
    res.tests = tests
    res.failed = tests["returncode"] != 0
    counts = ", ".join(f"{n} {k}" for k, n in tests["counts"].items()) or f"pytest exit {tests['returncode']}"
    res.rows.append(("GPU tests (pytest -m gpu)", counts + (f"; left out: {'; '.join(tests['left_out'])}" if tests["left_out"] else "")))

    say("bench distill: ViT-L-14 -> ViT-B-16, batch 256")
    d = bench_distill("ViT-L-14", "ViT-B-16", [50, 1000], 256, rounds, str(dev), progress=say)
    res.rows += [(f"distill step, {name} (median of {rounds})", f"{1000 * d.median(name):.0f} ms") for name in d.times_s]
    res.rows += [(name, f"{value:.2f}x") for name, value in d.ratios().items() if "extrapolated" not in name]
    if d.peak_gpu_mb is not None:
        res.rows.append(("distill peak GPU memory", f"{d.peak_gpu_mb:,.0f} MB"))

    from kdpipe.clip import load_backbone
    from kdpipe.infer.bench_precision import bench_precisions

    flops = vit_flops(load_backbone("ViT-B-16").model.visual)
    peak = peak_tflops(res.device)
    res.rows.append(("ViT-B/16 FLOPs per image (from its config); GPU dense bf16 peak",
                     f"{flops / 1e9:.1f} GFLOPs; {f'{peak:.0f} TFLOP/s' if peak else 'unknown'}"))
    say(f"bench classify: ViT-B-16, {images} synthetic JPEGs, {workers} workers")
    c = bench_classify("ViT-B-16", images, 1000, 256, 5, workers, str(dev), progress=say, resized=224)
    ips = lambda s: ips_of(images / s, flops, peak) if s > 0 else "-"  # noqa: E731
    res.rows.append(("classify: open_clip encode_image alone, autocast", ips(c.baseline_s)))
    res.rows.append((f"classify ({c.precision}) from JPEG files, PIL workers, float32 batches", f"{ips(c.files_s)} ({c.files_ratio:.2f}x the model alone)"))
    res.rows.append((f"classify ({c.precision}) from shards, PIL workers, float32 batches", f"{ips(c.shards_s)} ({c.shards_ratio:.2f}x the model alone)"))
    if c.resized_s:
        res.rows.append((f"classify ({c.precision}) from shards pre-resized to 224", f"{ips(c.resized_s)} ({c.baseline_s / c.resized_s:.2f}x the model alone)"))
    for name, seconds in c.device_decode_s.items():
        res.rows.append((f"classify ({c.precision}) from {name} (PIL + uint8 / nvJPEG)", f"{ips(seconds)} ({c.baseline_s / seconds:.2f}x the model alone)"))
    say("bench classify --precision fp32,bf16: model-only, batch 256")
    p = bench_precisions("ViT-B-16", ["fp32", "bf16"], 2048, 1000, 256, rounds, str(dev), progress=say)
    res.rows.append(("model only: open_clip fp32 encode_image", ips_of(p.images_per_s(p.baseline_s), flops, peak)))
    for name in p.times_s:
        top1 = f"top-1 vs fp32: world {100 * p.world[name][0]:.2f}%" if name in p.world else ""
        res.rows.append((f"model only: {name} ({p.compiled[name]})",
                         f"{ips_of(p.images_per_s(p.times_s[name]), flops, peak)} ({p.ratio(name):.2f}x fp32 encode_image); {top1}"))
    if any(n != images for n in c.rows.values()):
        res.failed = True
        res.rows.append(("classify rows written", str(c.rows)))

    from kdpipe.io import ensure_dir, write_json, write_text

    ensure_dir(out, "--out")
    write_json(out / "gpu-check.json", {"device": res.device, "versions": res.versions, "tests": tests, "distill": d.as_dict(),
                                        "classify": c.as_dict(), "precision": p.as_dict(), "flops_per_image": flops,
                                        "peak_bf16_tflops": peak, "rows": res.rows})
    write_text(out / "gpu-check.md", res.markdown())
    return res
