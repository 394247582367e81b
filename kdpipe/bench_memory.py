"""``kdpipe bench memory``: peak resident memory of distill and of classify over 1x and 10x the images.

Both stream their images (shards in, batches through, rows or steps out), so their memory should
not grow with the number of images: the ratio of the peaks at 10x and at 1x is the measure (goal
<= 1.05). Each measurement is one fresh Python process that runs the workload and, as it ends,
reports its own peak (``VmHWM``) and, separately, the largest of its finished child processes
(``RUSAGE_CHILDREN``: the DataLoader decoding workers; forked, so their figure includes the pages
they share with the main process).

Workloads, on the tiny test backbones and synthetic photos (small JPEGs, 256 distinct, the rest
copies, packed by ``kdpipe shards write``'s writer):

- ``distill``: the pipeline's ``distill`` stage, one epoch over the shards as ``shards.unlabeled``
  (``kd-tiny-t`` teacher trained for one epoch on a small imagefolder of the same photos). The
  stages it needs run beforehand in their own process, so the peak is distill's alone.
- ``classify``: :func:`kdpipe.infer.classify.classify` from the same shards to a JSONL file, with
  a zero-shot ``kd-tiny-s`` and random class features.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from kdpipe.errors import KdpipeError

TEACHER, STUDENT = "kd-tiny-t", "kd-tiny-s"
PHOTO_SIZE = (96, 72)  # small JPEGs: decoding is not what is measured
LABELED = (4, 12)  # classes x photos of the imagefolder the teacher trains on


# ---------------------------------------------------------------------------------------------- in the child


def peak_rss_mib() -> dict[str, float]:
    """This process's peak RSS and the largest peak among its finished (waited-for) children, in MiB."""
    main_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        with open("/proc/self/status") as f:
            main_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass  # no /proc (macOS): ru_maxrss it is
    return {"main_mib": main_kib / 1024, "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _run_cli(args: list[str]) -> None:
    from kdpipe.cli import app

    app(args, standalone_mode=False)  # exceptions propagate: the parent reports the child's stderr


def _distill(spec: dict) -> None:
    _run_cli(["run", "distill", "--only", "--run-dir", spec["run_dir"]])


def _classify(spec: dict) -> None:
    import torch
    import torch.nn.functional as F

    from kdpipe.clip import load_backbone
    from kdpipe.infer.bundle import ClassModel
    from kdpipe.infer.classify import classify
    from kdpipe.infer.sources import open_source
    from kdpipe.methods import build_method

    backbone = load_backbone(STUDENT)
    names = [f"class {i}" for i in range(spec["classes"])]
    feats = F.normalize(torch.randn(len(names), backbone.dims.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    model = ClassModel(build_method("zeroshot", backbone, names).eval(), names, feats, backbone.dims.logit_scale,
                       source="bench model", provenance={"backbone": STUDENT})
    summary = classify(model.encoder(), model.index("flat", "cpu"), names, open_source(spec["shards"]), spec["out"],
                       batch_size=spec["batch"], workers=spec["workers"], device="cpu", progress=False,
                       transform=model.transform())
    if summary.rows_total != spec["images"]:
        raise KdpipeError(f"classify wrote {summary.rows_total} rows for {spec['images']} images")


WORKLOADS: dict[str, Callable[[dict], None]] = {"distill": _distill, "classify": _classify}


def child_main(kind: str, spec_json: str) -> None:
    """``python -m kdpipe.bench_memory KIND SPEC``: run one workload, print its peaks as the last line."""
    start = time.perf_counter()
    WORKLOADS[kind](json.loads(spec_json))
    print(json.dumps({**peak_rss_mib(), "seconds": time.perf_counter() - start}), flush=True)


# ---------------------------------------------------------------------------------------------- in the parent


@dataclass
class MemoryBench:
    sizes: list[int]
    workers: int
    batch: int
    cache_views: int
    machine: str
    runs: dict[str, list[dict[str, float]]]  # workload -> one row per size: images, main_mib, worker_mib, seconds

    @property
    def ratios(self) -> dict[str, dict[str, float | None]]:
        """Largest size over smallest, per workload, for the main process and the largest worker."""
        out = {}
        for kind, rows in self.runs.items():
            first, last = rows[0], rows[-1]
            out[kind] = {k: (last[k] / first[k] if first[k] else None) for k in ("main_mib", "worker_mib")}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios}


def _measure(kind: str, spec: dict, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "kdpipe.bench_memory", kind, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KdpipeError(f"bench memory: the {kind} run over {spec['images']} images failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(args: list[str]) -> None:
    """Run a pipeline command here (not measured): its messages go to stderr, the table to stdout."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        _run_cli(args)


def _labeled_folder(root: Path) -> Path:
    from kdpipe.infer.bench_classify import synthetic_photos

    classes, per_class = LABELED
    for c in range(classes):
        synthetic_photos(root / f"class{c}", per_class, size=PHOTO_SIZE, seed=100 + c)
    return root


def _shards(root: Path, distinct: list[Path], images: int) -> str:
    """``images`` photos as shards in ``root``: the distinct ones, then copies of them (as costly to
    decode, quick to make)."""
    import shutil

    from kdpipe.data.shards import write_shards

    copies = root.with_name(root.name + "-copies")
    copies.mkdir()
    files = [str(p) for p in distinct[:images]]
    for i in range(len(files), images):
        files.append(shutil.copyfile(distinct[i % len(distinct)], copies / f"photo-{i:06d}.jpg"))
    write_shards(files, root, per_shard=100, max_side=0, keep_labels=False, workers=1)
    return str(root)


def machine_line() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def bench_memory(sizes: list[int], workers: int = 2, batch: int = 32, cache_views: int = 0,
                 say: Callable[[str], None] | None = None) -> MemoryBench:
    from kdpipe.infer.bench_classify import DISTINCT, synthetic_photos

    say = say or (lambda msg: None)
    if len(sizes) < 2 or min(sizes) < 16:
        raise KdpipeError(f"--images {sizes}: give at least two sizes of 16 or more images, like 400,4000")
    # one thread per process as in the tests; offline: the tiny backbones need no download
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in WORKLOADS}
    with tempfile.TemporaryDirectory(prefix="kdpipe-bench-memory-") as tmp:
        tmp = Path(tmp)
        say("writing the photos")
        labeled = _labeled_folder(tmp / "labeled")
        distinct = synthetic_photos(tmp / "photos", min(max(sizes), DISTINCT), size=PHOTO_SIZE)
        for n in sizes:
            say(f"{n} images: writing shards and preparing distill's inputs")
            shards = _shards(tmp / f"shards-{n}", distinct, n)
            # one run dir for all sizes: the teacher trains once, shards and what follows re-run per size
            run_dir = tmp / "run"
            sets = {"data.shots": 4, "data.workers": 0, "teacher.promptsrc.epochs": 1, "baselines.methods": "zeroshot",
                    "shards.unlabeled": shards, "shards.holdout": 16, "distill.epochs": 1, "distill.batch_size": batch,
                    "distill.workers": workers, "distill.cache_views": cache_views, "distill.agreement_every": 0}
            common = ["--run-dir", str(run_dir), "--teacher", TEACHER, "--student", STUDENT, "--dataset", "imagefolder",
                      "--data-root", str(labeled)]
            for k, v in sets.items():
                common += ["--set", f"{k}={v}"]
            prep = ["text-features", "shards"] + (["teacher-cache"] if cache_views else [])
            for target in prep:
                _prepare(["run", target, "--with-deps", "--only", *common])
            say(f"{n} images: distill")
            runs["distill"].append({"images": n, **_measure("distill", {"images": n, "run_dir": str(run_dir)}, env)})
            say(f"{n} images: classify")
            spec = {"images": n, "shards": shards, "out": str(tmp / f"classify-{n}.jsonl"), "batch": 64,
                    "workers": workers, "classes": 100}
            runs["classify"].append({"images": n, **_measure("classify", spec, env)})
    return MemoryBench(sizes=list(sizes), workers=workers, batch=batch, cache_views=cache_views, machine=machine_line(), runs=runs)


def summary_lines(res: MemoryBench) -> list[str]:
    lines = [f"{'workload':<9} {'images':>7} {'main MiB':>9} {'worker MiB':>11} {'seconds':>8}"]
    for kind, rows in res.runs.items():
        for r in rows:
            lines.append(f"{kind:<9} {r['images']:>7} {r['main_mib']:>9.1f} {r['worker_mib']:>11.1f} {r['seconds']:>8.1f}")
    lo, hi = res.sizes[0], res.sizes[-1]
    for kind, ratio in res.ratios.items():
        parts = ", ".join(f"{k.split('_')[0]} {v:.3f}x" if v is not None else f"{k.split('_')[0]} n/a" for k, v in ratio.items())
        lines.append(f"{kind}: peak at {hi} / peak at {lo} images: {parts} (goal <= 1.05)")
    return lines


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
