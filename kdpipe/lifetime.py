"""Every process kdpipe starts dies with the process that started it.

A ``--jobs`` stage worker, a DataLoader worker or a pretraining worker left behind by a killed
runner goes on training in a stage folder no run owns any more, beside the next run's worker (and a
DataLoader worker whose parent died can block forever on a full result pipe). On Linux the kernel
does it: ``PR_SET_PDEATHSIG`` sends SIGKILL the moment the parent thread ends, whatever killed it
(SIGKILL included), and each child arms its own children the same way, so a whole tree goes down in
cascade. Elsewhere a watcher thread polls the parent's pid.

Each child calls :func:`die_with_parent` first thing (a pool ``initializer``, a DataLoader
``worker_init_fn``). kdpipe starts its children from the main thread, which is what the kernel
watches: a child started from a short-lived thread would be killed when that thread ends.

A child still importing torch has not reached its initializer yet, so the kernel cannot arm it in
time. A ``--jobs`` stage worker therefore leads a process group of its own (:func:`lead_group`):
every process below it, half-started ones included, is in that group, and the worker takes the
whole group down when the runner goes. The runner stops the groups itself on Ctrl-C
(:func:`stop_groups`), since a terminal's SIGINT only reaches its own group.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_pid() -> int:
    parent = multiprocessing.parent_process()  # the pid that started us, known before any re-parenting
    return parent.pid if parent is not None else os.getppid()


def _arm_kernel() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, every_s: float, group: bool) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        if group:
            os.killpg(0, signal.SIGKILL)  # this process and everything it started
        os._exit(1)

    threading.Thread(target=watch, name="kdpipe-die-with-parent", daemon=True).start()


def die_with_parent(every_s: float = 0.2) -> None:
    """Arrange for this process to end as soon as its parent does (see the module doc)."""
    parent = _parent_pid()
    if _arm_kernel():
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        return
    _watch(parent, every_s, group=False)


def lead_group(every_s: float = 0.1) -> None:
    """Lead a new process group and end all of it as soon as the parent ends (see the module doc).

    Polled rather than left to the kernel: a SIGKILL from the kernel would end this process before
    it could end its group."""
    parent = _parent_pid()
    os.setpgid(0, 0)
    _watch(parent, every_s, group=True)


def stop_groups(leaders: list[int], grace_s: float = 1.5) -> None:
    """Ctrl-C for the groups led by ``leaders`` (their stages log the interruption and keep their
    checkpoints), then SIGKILL for whatever is still there after ``grace_s``."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 0.0)):
        for pid in leaders:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in leaders):
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
