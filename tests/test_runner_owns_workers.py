"""The runner of ``kdpipe run --jobs N`` owns every process it starts: killed by SIGKILL, SIGTERM or
Ctrl-C mid-stage, it takes its stage workers and their DataLoader workers with it within 2 s, and
the resumed run is the only process writing its stage folders.

The process tree is read from the OS (``/proc``), never from kdpipe's own bookkeeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pipeline_fakedata import make_fake_pets

SETTINGS = {
    "data.shots": 4,
    "data.workers": 2,  # DataLoader workers inside each stage worker: the grandchildren that used to outlive the runner
    "teacher.promptsrc.epochs": 200,  # long enough to be mid-stage when the runner dies
    "baselines.methods": "coop",
    "baselines.coop.epochs": 200,
}


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every live process (zombies count as dead)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry)] = int(fields[1])
    return out


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> depth below it (1 = child)."""
    ppids = _ppids()
    depth, frontier = {}, [(root, 0)]
    while frontier:
        parent, d = frontier.pop()
        for pid, ppid in ppids.items():
            if ppid == parent and pid not in depth:
                depth[pid] = d + 1
                frontier.append((pid, d + 1))
    return depth


def _alive(pids) -> list[int]:
    live = _ppids()
    return [p for p in pids if p in live]


def _run_command(run_dir: Path, data_root: Path, jobs: int) -> list[str]:
    cmd = [sys.executable, "-m", "kdpipe", "run", "all", "--jobs", str(jobs), "--run-dir", str(run_dir),
           "--teacher", "kd-tiny-t", "--student", "kd-tiny-s", "--dataset", "oxford_pets", "--data-root", str(data_root)]
    for key, value in SETTINGS.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def _wait_until_both_workers_train(runner: subprocess.Popen, timeout: float = 180) -> dict[int, int]:
    """The runner's process tree once two stage workers each have DataLoader workers of their own."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if runner.poll() is not None:
            raise AssertionError(f"the runner exited early ({runner.returncode}): {runner.stdout.read()}")
        tree = descendants(runner.pid)
        ppids = _ppids()
        busy = {ppids.get(p) for p, d in tree.items() if d == 2}  # stage workers with children
        if len(busy) >= 2:
            return tree
        time.sleep(0.2)
    raise AssertionError(f"two stage workers never started DataLoader workers: {descendants(runner.pid)}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_fake_pets(tmp_path_factory.mktemp("owns") / "data")


def _start(run_dir: Path, data_root: Path, jobs: int = 2, **popen) -> subprocess.Popen:
    env = {**os.environ, "KDPIPE_PROGRESS": "plain"}
    return subprocess.Popen(_run_command(run_dir, data_root, jobs), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_killing_the_runner_ends_every_process_it_started_within_2s(tmp_path, data_root, sig):
    # its own session, so Ctrl-C can be sent the way a terminal does: to the whole foreground group
    runner = _start(tmp_path / "run", data_root, start_new_session=True)
    try:
        tree = _wait_until_both_workers_train(runner)
        assert max(tree.values()) >= 2  # DataLoader workers of the stage workers are in the snapshot
        if sig == signal.SIGINT:
            os.killpg(runner.pid, signal.SIGINT)
        else:
            runner.send_signal(sig)
        runner.wait(timeout=30)
        deadline = time.time() + 2.0
        while _alive(tree) and time.time() < deadline:
            time.sleep(0.05)
        assert _alive(tree) == [], f"still alive 2 s after {sig.name}: {_alive(tree)} of {sorted(tree)}"
    finally:
        for pid in _alive(descendants(runner.pid)) + ([runner.pid] if runner.poll() is None else []):
            os.kill(pid, signal.SIGKILL)
        runner.wait()


def test_a_resumed_run_is_the_only_writer_of_its_stage_folders(tmp_path, data_root):
    """SIGKILL the runner mid-stage and resume at once: from the moment the resumed run trains a
    stage until it trains both, no process of the killed run holds a file open in the run dir, and
    the stage folders' locks belong to the resumed run's own workers."""
    from kdpipe.pipeline.lock import StageLock

    run_dir = tmp_path / "run"
    first = _start(run_dir, data_root)
    old = _wait_until_both_workers_train(first)
    first.kill()
    first.wait()
    second = _start(run_dir, data_root)
    try:
        writers_outside: set[int] = set()
        deadline = time.time() + 180
        while time.time() < deadline:
            assert second.poll() is None, second.stdout.read()
            ours = set(descendants(second.pid))
            holders = {StageLock.holder(run_dir / f) for f in ("teacher-promptsrc-seed1", "baseline-coop-seed1")}
            if holders & ours:  # the resumed run trains: nobody else may be in the run dir now
                writers_outside |= {pid for pid in _alive(old) if pid not in ours and _holds_file_under(pid, run_dir)}
            if None not in holders and holders <= ours:
                break  # both stages are being trained again, by the resumed run's workers
            time.sleep(0.1)
        else:
            raise AssertionError("the resumed run never trained both stages again")
        assert writers_outside == set(), f"processes of the killed run had files open in {run_dir}"
        assert _alive(old) == []
    finally:
        second.kill()
        second.wait()
        for pid in _alive(old):
            os.kill(pid, signal.SIGKILL)


def _holds_file_under(pid: int, folder: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(folder)):
                return True
        except OSError:
            continue
    return False
