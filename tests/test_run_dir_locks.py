"""Locks that outlive nothing: a killed runner frees its run dir at once and takes its --jobs workers
with it; a stage folder is owned by one process at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kdpipe.errors import KdpipeError
from kdpipe.pipeline import RunLock
from kdpipe.pipeline.lock import StageLock
from test_runner_toy_graph import TOY_SOURCE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_runners_forked_children_do_not_keep_the_run_dir_locked(tmp_path):
    # a DataLoader worker is a forked child: it must not inherit the run dir's lock
    ready = tmp_path / "child-running"
    script = textwrap.dedent(f"""
        import multiprocessing as mp, os, sys, time
        from kdpipe.pipeline import RunLock

        def work():  # runs after the fork hooks: the child is past the point where it drops the lock fd
            open({str(ready)!r}, "w").close()
            time.sleep(60)

        lock = RunLock({str(tmp_path / "run")!r}).__enter__()
        child = mp.get_context("fork").Process(target=work)
        child.start()
        while not os.path.exists({str(ready)!r}):
            time.sleep(0.01)
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        assert RunLock.holder(tmp_path / "run") == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _alive(child)
        with RunLock(tmp_path / "run"):  # at once, although the child lives on
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_jobs_workers_die_with_a_killed_runner_and_the_stage_is_not_run_twice(tmp_path):
    src = tmp_path / "toy_stages.py"
    src.write_text(TOY_SOURCE)
    run_dir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import importlib.util
        from kdpipe.config import resolve_config
        from kdpipe.pipeline import StageGraph, run_stages
        spec = importlib.util.spec_from_file_location("toy_stages", {str(src)!r})
        toy = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy)
        graph = toy.build_expanded(StageGraph()); graph.source = ({str(src)!r}, "build_expanded")
        cfg = resolve_config(None, [("toy.steps", "400", "--set")], schema=graph.schema)
        run_stages(cfg, {str(run_dir)!r}, graph=graph, jobs=2, echo=lambda m: None)
    """)
    env = {**os.environ, "TOY_SLEEP": "0.2"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        worker = _wait_for(lambda: StageLock.holder(run_dir / "train"), 120, "train to start in a worker")
        assert worker not in (proc.pid, -1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: not _alive(worker), 10, f"worker {worker} to exit after its runner was killed")
        assert StageLock.holder(run_dir / "train") is None
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stage_folder_held_by_another_process_is_not_prepared_again(tmp_path):
    from kdpipe.pipeline.execute import prepare

    folder = tmp_path / "train"
    script = f"from kdpipe.pipeline.lock import StageLock; import time; StageLock({str(folder)!r}).__enter__(); print('held', flush=True); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        (folder / "ckpt").mkdir()
        (folder / "ckpt" / "state.json").write_text(json.dumps({"step": 3}))
        with pytest.raises(KdpipeError, match=f"still being written by another process \\(pid {other.pid}\\)"):
            prepare(folder, "another-fingerprint", fresh=True)
        assert (folder / "ckpt" / "state.json").exists()  # nothing of the other process's work was cleared
    finally:
        other.kill()
        other.wait()
    prepare(folder, "another-fingerprint", fresh=True)  # free once it is gone


def test_a_finished_checkpoint_is_not_resumed_when_an_upstream_stage_was_re_run(tmp_path):
    """Same settings, other inputs (a non-deterministic upstream re-run with --force): train again."""
    import random
    from dataclasses import dataclass

    from kdpipe.config import resolve_config
    from kdpipe.pipeline import StageGraph, run_stages

    graph = StageGraph()

    @graph.schema.section("toy2")
    @dataclass
    class Toy2:
        steps: int = 3

    @graph.stage("up", outputs=["up.json"])
    def up(ctx):  # like a teacher trained without a fixed seed: every run differs
        (ctx.dir / "up.json").write_text(json.dumps({"value": random.random()}))
        return {}

    @graph.stage("down", reads=["toy2.steps"], deps=["up"], outputs=["down.json"])
    def down(ctx):
        state_file = ctx.ckpt_dir / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0}
        resumed_from = state["step"]
        value = json.loads((ctx.inputs["up"] / "up.json").read_text())["value"]
        while state["step"] < ctx.cfg["toy2"].steps:
            state["step"] += 1
            state_file.write_text(json.dumps(state))
        (ctx.dir / "down.json").write_text(json.dumps({"from": value}))
        return {"resumed_from": resumed_from}

    cfg = resolve_config(None, [], schema=graph.schema)
    rd = tmp_path / "run"
    run_stages(cfg, rd, graph=graph, echo=lambda m: None)
    run_stages(cfg, rd, target="up", force=True, graph=graph, echo=lambda m: None)
    report = run_stages(cfg, rd, graph=graph, echo=lambda m: None)
    assert report.ran == ["down"] and report.metrics["down"]["resumed_from"] == 0
    assert json.loads((rd / "down" / "down.json").read_text())["from"] == json.loads((rd / "up" / "up.json").read_text())["value"]


def test_a_read_only_run_dir_with_nothing_to_do_runs_and_one_that_needs_work_says_so(tmp_path, monkeypatch):
    import errno
    import importlib.util

    import kdpipe.pipeline.lock as lock_module
    from kdpipe.pipeline import StageGraph, run_stages, stage_statuses
    from test_runner_toy_graph import cfg_of

    src = tmp_path / "toy_stages.py"
    src.write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location("toy_ro", src)
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run_stages(cfg_of(graph), rd, graph=graph, echo=lambda m: None)

    real_open = os.open

    def read_only(path, flags, *args):  # as on a read-only mount (root ignores chmod, so simulate it)
        if str(path).endswith(".kdpipe.lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(lock_module.os, "open", read_only)
    report = run_stages(cfg_of(graph), rd, graph=graph, echo=lambda m: None)
    assert report.ran == [] and report.skipped == ["prep", "train", "report"]
    assert {s.state for s in stage_statuses(cfg_of(graph), rd, graph=graph)} == {"done"}
    with pytest.raises(KdpipeError, match="is read-only .*, and train needs to run there") as e:
        run_stages(cfg_of(graph, "toy.b=0.9"), rd, graph=graph, echo=lambda m: None)
    assert "\n" not in str(e.value)
