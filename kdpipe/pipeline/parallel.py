"""Independent stages side by side: ``kdpipe run --jobs N``.

The runner process keeps the lock and every decision (skip or run, preparing the folder); each
stage that runs goes to one of N spawned worker processes as soon as everything it needs has
finished, and writes its outputs and manifest there exactly as in a sequential run. On a small CPU
machine, N single-threaded processes do more work than one process with N threads (tiny models
spend much of their time in OpenMP spin-waits), so each worker gets ``cores / N`` threads.

The first failure stops new stages from starting; those already running finish (their work is
kept), then the failure is raised as one line, as a sequential run would.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kdpipe.dist import Ranks
from kdpipe.errors import KdpipeError
from kdpipe.lifetime import lead_group, stop_groups
from kdpipe.pipeline.execute import execute_instance
from kdpipe.pipeline.graph import StageGraph
from kdpipe.pipeline.plan import Plan

if TYPE_CHECKING:
    from kdpipe.config import Config


def worker_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _init_worker(threads: int, leaders) -> None:
    import torch

    lead_group()  # an orphaned worker would go on training in a stage folder no run owns any more
    leaders.put(os.getpid())  # the runner's list of groups to stop on Ctrl-C (the pid leads one now)
    torch.set_num_threads(threads)
    # several processes drawing live bars on one terminal garble each other: plain lines instead
    os.environ["KDPIPE_PROGRESS"] = "plain"


def graph_source(graph: StageGraph) -> tuple[str, str]:
    """How a worker rebuilds ``graph``: its ``source`` (a Python file or module and the name of a
    builder taking an empty StageGraph; :func:`kdpipe.stage_graph.stage_graph` sets the pipeline's);
    KdpipeError when unknown."""
    source = getattr(graph, "source", None)
    if source is None:
        raise KdpipeError("jobs > 1 needs a stage graph that worker processes can rebuild: set graph.source = (file or module, builder name)")
    return source


def _load_graph(source: tuple[str, str]) -> StageGraph:
    import importlib
    import importlib.util

    where, builder = source
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"kdpipe_stage_graph_{abs(hash(where))}", where)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, builder)(StageGraph())


def _execute_in_worker(source: tuple[str, str], settings: dict[str, Any], run_dir: str, name: str) -> dict[str, Any]:
    """Run one prepared stage in this worker; errors come back as data (exceptions may not pickle).

    The config travels as its flat JSON values (section classes may not pickle) and is rebuilt
    against the worker's own copy of the graph."""
    from kdpipe.config import resolve_config

    graph = _load_graph(source)
    cfg = resolve_config(None, [(k, v, "the runner") for k, v in settings.items()], schema=graph.schema)
    plan = Plan(graph, cfg)
    try:
        metrics, wall = execute_instance(plan, Path(run_dir), plan.instances[name], Ranks())
    except KdpipeError as e:
        return {"error": str(e)}
    except Exception as e:  # the stage log holds the traceback; failed.json the reason
        return {"error": f"stage {name} failed: {type(e).__name__}: {e}"}
    return {"metrics": metrics, "wall": wall}


def chain_lengths(plan: Plan, selected: list[str]) -> dict[str, int]:
    """Stages on the longest path from each stage to the end of the selection, itself included."""
    chosen = set(selected)
    below: dict[str, list[str]] = {n: [] for n in selected}
    for name in selected:
        for dep in plan.instances[name].deps:
            if dep in chosen:
                below[dep].append(name)
    length: dict[str, int] = {}
    for name in reversed(selected):  # dependency order reversed: dependents come first
        length[name] = 1 + max((length[d] for d in below[name]), default=0)
    return length


def _drain(queue) -> list[int]:
    out = []
    while not queue.empty():
        out.append(queue.get())
    return out


def run_parallel(
    plan: Plan,
    selected: list[str],
    jobs: int,
    graph: StageGraph,
    cfg: "Config",
    run_dir: Path,
    decide: Callable[[str], dict[str, Any]],
    finished: Callable[[str, dict[str, Any], float], None],
    skipped: Callable[[str], None],
) -> None:
    """Run ``selected`` (in dependency order) on ``jobs`` workers."""
    import multiprocessing as mp

    source, settings = graph_source(graph), cfg.flat()

    pending = list(selected)
    settled: set[str] = set()  # done in this run or skipped
    running: dict[Any, str] = {}
    error: str | None = None

    def ready(name: str) -> bool:
        return all(d in settled for d in plan.instances[name].deps if d in selected)

    # Longest chain first: the teacher (teacher -> text-features -> distill -> evaluate) must not
    # wait behind baselines that only feed evaluate.
    chain = chain_lengths(plan, selected)

    context = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    leaders = context.SimpleQueue()  # each worker's pid, once it leads its own process group
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(worker_threads(jobs), leaders))
    try:
        while pending or running:
            started = True
            while error is None and started and len(running) < jobs:
                started = False
                for name in sorted((n for n in pending if ready(n)), key=lambda n: -chain[n]):
                    if len(running) >= jobs:
                        break
                    pending.remove(name)
                    started = True
                    if not decide(name)["run"]:
                        settled.add(name)
                        skipped(name)
                        break  # its dependents may be ready now: look again from the start
                    running[pool.submit(_execute_in_worker, source, settings, str(run_dir), name)] = name
            if not running:
                break  # nothing left that can start (after an error, or a dependency that failed)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                result = future.result()
                if "error" in result:
                    error = error or result["error"]
                    continue
                settled.add(name)
                finished(name, result["metrics"], result["wall"])
    except BaseException:
        # Ctrl-C reaches only the runner's process group, and the pool's exit hook would wait for
        # workers that never heard it: the runner stops their groups itself.
        stop_groups(_drain(leaders))
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise KdpipeError(error)
