"""``run_stages``: what ``kdpipe run`` does — decide, under the run-dir lock, which instances to
skip and which to run, in order (or side by side with ``jobs``), rank 0 deciding under torchrun."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kdpipe.config import Config
from kdpipe.dist import Ranks, leader_only
from kdpipe.errors import KdpipeError
from kdpipe.pipeline.execute import execute_instance, prepare
from kdpipe.pipeline.graph import StageGraph
from kdpipe.pipeline.lock import ReadOnlyFolder, RunLock, check_run_dir
from kdpipe.pipeline.manifest import outputs_digest
from kdpipe.pipeline.plan import Plan, headline
from kdpipe.pipeline.seed_layout_migration import migrate_seed_layout, seed_layout_notes
from kdpipe.progress import format_duration


@dataclass
class RunReport:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # downstream stages whose other inputs are not done
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def _echo_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_stages(
    cfg: Config,
    run_dir: str | Path,
    target: str = "all",
    with_deps: bool = False,
    force: bool = False,
    *,
    graph: StageGraph,
    echo: Callable[[str], None] = _echo_stderr,
    on_locked: Callable[[], None] | None = None,
    jobs: int = 1,
    downstream: bool = False,
) -> RunReport:
    """Run what is missing or stale among ``target`` of ``graph`` (and, with ``with_deps``, what it
    needs; with ``downstream``, what needs it: ``kdpipe run STAGE`` without ``--only``).

    ``force`` re-runs the targets even when done (not the dependencies pulled in by ``with_deps``).
    A dependency outside the selection that is not done stops the run with one line saying what
    to run; a downstream stage in that case waits (``RunReport.waiting``), since the user did not
    ask for it by name. ``on_locked`` runs once the run-dir lock is held (the CLI saves its settings there).
    Under ``torchrun`` every rank calls this; rank 0 decides and the others follow (:class:`kdpipe.dist.Ranks`).
    ``jobs`` > 1 runs stages whose inputs are ready side by side in worker processes (not under
    torchrun, where the ranks already share the machine; see :mod:`kdpipe.pipeline.parallel`).
    """
    if jobs < 1:
        raise KdpipeError(f"jobs must be at least 1, got {jobs}")
    run_dir = Path(run_dir)
    ranks = Ranks()
    plan = Plan(graph, cfg)
    selected = plan.select(target, with_deps, downstream)
    targets = set(plan.select(target, False))
    for name in selected:
        plan.expected(name)  # bad inputs (a missing data root ...) fail here, before anything is touched
    report = RunReport()
    lock = RunLock(run_dir)

    def decide(name: str) -> dict[str, Any]:
        """Rank 0: skip or run ``name`` (and prepare its folder when running)."""
        inst = plan.instances[name]
        for dep in inst.deps:
            if dep in report.waiting:
                return wait(name, f"needs {dep}, which waits too")
            if dep not in selected and dep not in report.ran:
                st = plan.status(run_dir, dep)
                if st.state != "done" and name not in targets:
                    return wait(name, f"needs {dep}, which is {st.state}")
                if st.state != "done":
                    raise KdpipeError(
                        f"stage {name} needs {dep}, which is {st.state}{' (' + st.reason + ')' if st.reason else ''}; "
                        f"run `kdpipe run {target} --with-deps` or `kdpipe run {dep}` first"
                    )
        st = plan.status(run_dir, name)
        if st.state == "done" and not (force and name in targets):
            echo(f"skip  {name}: done{'  ' + st.headline if st.headline else ''}")
            return {"run": False}
        why = "forced" if st.state == "done" else (f"{st.state}: {st.reason}" if st.reason else st.state)
        echo(f"run   {name} ({why})")
        inputs = {d: outputs_digest(run_dir / plan.instances[d].folder) for d in inst.deps}
        prepare(run_dir / inst.folder, plan.expected(name).fingerprint, fresh=force and name in targets, inputs=inputs)
        return {"run": True}

    def wait(name: str, why: str) -> dict[str, Any]:
        echo(f"wait  {name}: {why} (`kdpipe run {name} --with-deps` runs it)")
        report.waiting.append(name)
        return {"run": False, "waiting": True}

    def take_lock() -> None:
        try:
            lock.__enter__()
        except ReadOnlyFolder as e:
            # a read-only run dir (a shared or archived result) is fine when there is nothing to write
            todo = [n for n in selected if (force and n in targets) or plan.status(run_dir, n).state != "done"]
            if todo:
                raise KdpipeError(f"{e}, and {todo[0]} needs to run there; copy the run dir somewhere writable") from None
            check_run_dir(run_dir)
            for line in seed_layout_notes(plan, run_dir):
                echo(line)
            return
        check_run_dir(run_dir)
        for line in migrate_seed_layout(plan, run_dir):  # before any stage is judged done or not
            echo(line)
        if on_locked is not None:
            on_locked()

    def finished(name: str, metrics: dict[str, Any], wall: float) -> None:
        head = headline(plan.instances[name].spec, metrics)
        if ranks.leader:
            echo(f"done  {name} in {format_duration(wall)}{'  ' + head if head else ''}")
        report.ran.append(name)
        report.metrics[name] = metrics

    try:
        leader_only(take_lock, ranks)  # rank 0 runs it; an error there reaches the other ranks as one line
        if jobs > 1 and ranks.world == 1:
            from kdpipe.pipeline.parallel import run_parallel

            run_parallel(plan, selected, jobs, graph, cfg, run_dir, decide, finished,
                         lambda n: n in report.waiting or report.skipped.append(n))
        else:
            for name in selected:
                decision = leader_only(lambda: decide(name), ranks)
                if not decision["run"]:
                    if decision.get("waiting") and name not in report.waiting:
                        report.waiting.append(name)  # other torchrun ranks learn it from rank 0 here
                    elif not decision.get("waiting"):
                        report.skipped.append(name)
                    continue
                finished(name, *execute_instance(plan, run_dir, plan.instances[name], ranks))
    finally:
        lock.__exit__(None, None, None)
    ranks.close()
    return report


