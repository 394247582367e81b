"""One run at a time per run directory (an OS lock), and ``run.json``: the settings it was last run with."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.io import ensure_dir, read_json_or_none, write_json
from kdpipe.pipeline.manifest import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, STAGE_LOCK, check_format, library_versions, now

LOCK = ".kdpipe.lock"
RUN_SETTINGS = "run.json"


# Lock fds this process holds. A forked child (a DataLoader worker) shares the open file
# description, so flock stays held until the child exits too: a killed runner's workers kept its
# run dir locked for seconds. Children close their copies right after the fork.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class ReadOnlyFolder(KdpipeError):
    """The folder cannot be written: fine for commands that only read it."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder (flock on a file in it: released by the OS when
    its process dies, so a lock file left by a killed run never blocks the next one)."""

    name = LOCK
    what = "folder"
    busy = "folder {where} is in use by another kdpipe process{who}"  # the one-line refusal

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.name
        self.target = Path(folder)  # what the message names
        self.fd: int | None = None

    def busy_message(self, pid: int | None) -> str:
        return self.busy.format(where=self.target, who=f" (pid {pid})" if pid else "")

    def __enter__(self) -> "FolderLock":
        ensure_dir(self.path.parent, self.what)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyFolder(f"{self.what} {self.path.parent} is read-only ({e.strerror})") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise KdpipeError(self.busy_message(pid)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _HELD.add(fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @classmethod
    def holder(cls, folder: Path) -> int | None:
        """The pid of the process holding the lock, None when nobody does."""
        path = Path(folder) / cls.name
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class RunLock(FolderLock):
    """One kdpipe run at a time in a run directory."""

    what = "run dir"
    busy = "run dir {where} is in use by another kdpipe run{who}; wait for it to finish or use another --run-dir"


class StageLock(FolderLock):
    """One process at a time in a stage's folder: a worker orphaned by a killed runner keeps it
    until it exits, so a resumed run cannot train into the same folder beside it."""

    name = STAGE_LOCK
    what = "stage folder"
    busy = "stage folder {where} is still being written by another process{who}; wait for it to exit or stop it"


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


class OutputLock(FolderLock):
    """One writer at a time for an output file (``.OUT.lock`` beside it, hidden): two ``classify``
    runs on one ``--out`` would both append the images neither had finished."""

    what = "the folder of --out"
    busy = "{where} is being written by another kdpipe classify{who}; wait for it or choose another --out"

    def __init__(self, out: Path):
        super().__init__(Path(out).parent)
        self.target = Path(out)
        self.path = self.target.with_name(f".{self.target.name}.lock")


# ---- run settings (what the run dir was last run with) ------------------------------------------
def read_run_settings(run_dir: Path) -> dict | None:
    """``run.json``: the recipe and overrides the run dir was last run with; None when absent."""
    data = read_json_or_none(Path(run_dir) / RUN_SETTINGS)
    if data is None:
        if (Path(run_dir) / RUN_SETTINGS).exists():
            raise KdpipeError(f"{Path(run_dir) / RUN_SETTINGS} is unreadable; fix or delete it")
        return None
    check_format(data, Path(run_dir) / RUN_SETTINGS)
    return data


def remembered_settings(run_dir: Path) -> tuple[str | None, dict[str, tuple[Any, str]]]:
    """What ``run.json`` remembers, as ``settings_from_cli`` takes it: (recipe, key -> (value, source))."""
    saved = read_run_settings(run_dir) or {}
    where = Path(run_dir) / RUN_SETTINGS
    return saved.get("recipe"), {k: (v, f"{k}={v} saved in {where}") for k, v in saved.get("overrides", {}).items()}


def write_run_settings(run_dir: Path, recipe: str | None, overrides: dict[str, Any]) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / RUN_SETTINGS, {
        "format_version": MANIFEST_VERSION, "kdpipe_version": library_versions()["kdpipe"],
        "recipe": recipe, "overrides": overrides, "updated_at": now(),
    }, sort_keys=True, fsync=True)


def check_run_dir(run_dir: Path) -> None:
    """Fail in one line when the run dir was written by an incompatible kdpipe."""
    run_dir = Path(run_dir)
    read_run_settings(run_dir)
    if run_dir.is_dir():
        for child in sorted(run_dir.iterdir()):
            data = read_json_or_none(child / MANIFEST) if child.is_dir() else None
            if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT:
                check_format(data, child / MANIFEST)


