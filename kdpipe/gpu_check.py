"""``kdpipe bench gpu``: every GPU figure from one command, sized for a few minutes on one GPU.

1. the GPU tests (``pytest -m gpu`` on the source checkout's ``tests/``): AMP in teacher training,
   distillation and classify, nvJPEG decoding, the class index on the GPU; ``faiss_gpu`` tests only
   where faiss has GPU support and ``multi_gpu`` (NCCL) only with two GPUs or more: each one left
   out is named in the table with the reason;
2. ``bench distill``: the reference-style step vs kdpipe's, ViT-L/14 -> ViT-B/16 at batch 256;
3. ``bench classify``: end to end from synthetic JPEG files and shards, PIL and nvJPEG decoding,
   against ``encode_image`` alone.
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

    say(f"bench classify: ViT-B-16, {images} synthetic JPEGs, {workers} workers")
    c = bench_classify("ViT-B-16", images, 1000, 256, 5, workers, str(dev), progress=say)
    ips = lambda s: f"{images / s:,.0f} images/s" if s > 0 else "-"  # noqa: E731
    res.rows.append(("classify: open_clip encode_image alone, same autocast", ips(c.baseline_s)))
    res.rows.append(("classify from JPEG files, PIL workers, float32 batches", f"{ips(c.files_s)} ({c.files_ratio:.2f}x the model alone)"))
    res.rows.append(("classify from shards, PIL workers, float32 batches", f"{ips(c.shards_s)} ({c.shards_ratio:.2f}x the model alone)"))
    for name, seconds in c.device_decode_s.items():
        res.rows.append((f"classify from {name} (PIL + uint8 / nvJPEG)", f"{ips(seconds)} ({c.baseline_s / seconds:.2f}x the model alone)"))
    if any(n != images for n in c.rows.values()):
        res.failed = True
        res.rows.append(("classify rows written", str(c.rows)))

    from kdpipe.io import ensure_dir, write_json, write_text

    ensure_dir(out, "--out")
    write_json(out / "gpu-check.json", {"device": res.device, "versions": res.versions, "tests": tests,
                                        "distill": d.as_dict(), "classify": c.as_dict(), "rows": res.rows})
    write_text(out / "gpu-check.md", res.markdown())
    return res
