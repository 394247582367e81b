"""Pretrain the student (world-b) and the teacher (world-l) side by side, one process per core.

These tiny models run no faster with two threads than with one (and OpenMP spin-waiting makes two
threads in one process much slower on a busy machine), so two single-threaded processes do twice
the work. The teacher goes first because it is the long one. Cached models are returned without
starting any process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from pathlib import Path

from kdpipe.errors import KdpipeError
from kdpipe.world.pretrain import WORLD_ARCHS, PretrainConfig, PretrainResult, cached_pretrain, pretrain


def _child(arch: str, out_path: str, seed: int, budget, use_cache: bool, messages) -> None:
    def report(step: int, total: int, logs: dict) -> None:
        if step == total or step % 5 == 0:
            messages.put(("step", arch, step, total, float(logs["loss"])))

    try:
        result = pretrain(arch, out_path, seed, budget, use_cache=use_cache, progress=report, threads=1)
        messages.put(("done", arch, result.as_dict()))
    except KdpipeError as e:
        messages.put(("error", arch, str(e)))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        messages.put(("error", arch, f"{type(e).__name__}: {e}"))


def _result_from_dict(d: dict) -> PretrainResult:
    return PretrainResult(**{**d, "path": Path(d["path"])})


def pretrain_world(
    out_dir: str | Path,
    seed: int = 0,
    budget: str | int | PretrainConfig | None = "full",
    *,
    archs: tuple[str, ...] = ("world-l", "world-b"),
    parallel: bool | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> dict[str, PretrainResult]:
    """Pretrain every arch in ``archs`` into ``out_dir/<arch>.safetensors``; returns results by arch.

    ``parallel``: one process per model (default: when the machine has at least two cores).
    """
    out_dir = Path(out_dir).expanduser()
    unknown = [a for a in archs if a not in WORLD_ARCHS]
    if unknown:
        raise KdpipeError(f"unknown world architecture(s) {unknown}; expected among {list(WORLD_ARCHS)}")
    results: dict[str, PretrainResult] = {}
    todo = []
    for arch in archs:
        hit = cached_pretrain(arch, out_dir / f"{arch}.safetensors", seed, budget) if use_cache else None
        if hit is not None:
            results[arch] = hit
        else:
            todo.append(arch)
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    if not parallel or len(todo) < 2:
        for arch in todo:
            results[arch] = pretrain(arch, out_dir / f"{arch}.safetensors", seed, budget, use_cache=use_cache, progress=progress)
        return {a: results[a] for a in archs}
    results.update(_run_parallel(todo, out_dir, seed, budget, use_cache, progress))
    return {a: results[a] for a in archs}


def _run_parallel(archs: list[str], out_dir: Path, seed: int, budget, use_cache: bool, progress: bool) -> dict[str, PretrainResult]:
    ctx = mp.get_context("spawn")  # fork would copy the parent's torch thread pools
    messages = ctx.Queue()
    procs = {
        arch: ctx.Process(target=_child, args=(arch, str(out_dir / f"{arch}.safetensors"), seed, budget, use_cache, messages), daemon=True)
        for arch in archs
    }
    bar, tasks = _bars(archs) if progress else (None, {})
    results: dict[str, PretrainResult] = {}
    try:
        # children read OMP_WAIT_POLICY when torch loads, before any of our code runs in them:
        # passive waiting keeps idle OpenMP threads from spinning on a shared machine
        previous = os.environ.get("OMP_WAIT_POLICY")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            for p in procs.values():
                p.start()
        finally:
            if previous is None:
                os.environ.pop("OMP_WAIT_POLICY", None)
            else:
                os.environ["OMP_WAIT_POLICY"] = previous
        while len(results) < len(archs):
            try:
                msg = messages.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [a for a, p in procs.items() if a not in results and not p.is_alive() and p.exitcode not in (None, 0)]
                if dead:
                    raise KdpipeError(f"world pretraining of {dead[0]} stopped unexpectedly (exit code {procs[dead[0]].exitcode})")
                continue
            kind, arch = msg[0], msg[1]
            if kind == "step" and bar is not None:
                bar.update(tasks[arch], completed=msg[2], total=msg[3], info=f"loss {msg[4]:.3f}")
            elif kind == "done":
                results[arch] = _result_from_dict(msg[2])
            elif kind == "error":
                raise KdpipeError(f"world pretraining of {arch} failed: {msg[2]}")
        for p in procs.values():
            p.join()
    finally:
        if bar is not None:
            bar.stop()
        for p in procs.values():
            if p.is_alive():
                p.terminate()
                p.join()
    return results


def _bars(archs: list[str]):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("pretraining {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True
    )
    tasks = {a: bar.add_task(a, total=None, info="") for a in archs}
    bar.start()
    return bar, tasks
