"""Files written so that a reader never sees half of one: the one atomic writer kdpipe uses.

Everything goes through a temporary sibling and ``os.replace``: a crash, a kill or a full disk
leaves the old file or none, never a torn one. JSON and safetensors (tensors with JSON metadata,
never pickle) are the only formats kdpipe writes for itself.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from kdpipe.errors import KdpipeError


# What a user fixes by freeing space or choosing another place, never a bug: these OSErrors, and
# only these, become one-line KdpipeErrors (a broad catch would hide real bugs behind a message).
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only"}


def disk_problem(error: BaseException, path: str | os.PathLike | None = None, needed: int | None = None):
    """The one-line KdpipeError for a write that failed because of the disk, or None for any other error.

    ``path`` is the file being written (``error.filename`` when not given), ``needed`` its size in
    bytes when known."""
    if not isinstance(error, OSError) or error.errno not in DISK_ERRNOS:
        return None
    where = path if path is not None else error.filename
    what = DISK_ERRNOS[error.errno] + (f" ({needed:,} bytes needed)" if needed else "")
    fix = "write somewhere else" if error.errno == errno.EROFS else "free some space"
    return KdpipeError(f"cannot write {where or 'a file'}: {what}; {fix} and run the same command again "
                       "(finished work is kept)")


@contextmanager
def disk_errors(path: str | os.PathLike | None = None, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk, a quota or a read-only file system in the block into :func:`disk_problem`'s line."""
    try:
        yield
    except OSError as e:
        problem = disk_problem(e, path, needed)
        if problem is None:
            raise
        raise problem from None


@contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds.

    The temporary file is removed whatever happens; a full disk is one line naming ``path`` (and
    ``needed``, its size in bytes, when the caller knows it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with disk_errors(path, needed):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def json_default(obj: Any) -> Any:
    """What ``json.dumps`` cannot encode by itself: numpy/torch scalars and arrays, paths, sets, dataclasses."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` atomically; ``fsync`` also forces it to disk (manifests, run state)."""
    data = text.encode("utf-8")
    with atomic_path(path, needed=len(data)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False, fsync: bool = False) -> Path:
    """Indented JSON, written atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default) + "\n", fsync=fsync)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The parsed file, or None when it is missing or unreadable (a corrupt file counts as absent)."""
    try:
        return read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def json_lines(text: str, where: str, expected: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON Lines text; a line that is not JSON is
    one KdpipeError: ``WHERE:N is not valid JSON (why); expected EXPECTED``."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise KdpipeError(f"{where}:{n} is not valid JSON ({e.msg}); expected {expected}") from None
        yield n, value


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``new`` in place of ``target``: what was there (a folder or a file) is
    moved aside first and removed after, so ``target`` is the old whole or the new whole, never a mix."""
    new, target = Path(new), Path(target)
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        if aside is not None:  # the old whole goes back rather than leaving no target at all
            os.replace(aside / target.name, target)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors as safetensors, atomically and with the user's umask (safetensors itself writes 0600)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in state.values())  # the header adds a little
    with atomic_path(path, needed=size) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except SafetensorError as e:
            # safetensors reports a failed write as "... I/O error: ... (os error 28)": give it its errno back
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)) from e
        os.chmod(tmp, 0o666 & ~current_umask())
    return Path(path)


def write_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, Any] | None = None) -> Path:
    """safetensors with every metadata value JSON-encoded (safetensors metadata must be str -> str)."""
    return write_safetensors(path, tensors, {k: json.dumps(v, default=json_default) for k, v in (metadata or {}).items()})


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_tensors(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """Tensors and decoded metadata of a file written by :func:`write_tensors`.

    A file safetensors cannot read (damaged, truncated, a pickle) is a KdpipeError naming it.
    """
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError) as e:
        raise KdpipeError(f"{path} is not a readable safetensors file ({tensor_file_problem(path, e)})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v  # written by another tool
    return tensors, meta


def tensor_file_problem(path: str | os.PathLike, error: BaseException) -> str:
    """Why safetensors could not read ``path`` (``error``), in a few words for a one-line message."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        return e.strerror or type(e).__name__
    if not head:
        return "the file is empty"
    # a safetensors file opens with an 8-byte header length and then its JSON header
    pickled = head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
                                                  and head[8:9] != b"{")
    if pickled:
        return "it is a pickle (torch.save) file; kdpipe never unpickles, it reads safetensors only"
    text = " ".join(str(error).split()) or type(error).__name__
    return "not a safetensors file, or a damaged or truncated one: " + text.removeprefix("Error while deserializing header: ")[:200]


def ensure_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the folder ``path`` (and its parents), or say in one line why it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise KdpipeError(f"{what} {path}: {blocker} is a file, not a folder; choose another path") from None
    except PermissionError:
        raise KdpipeError(f"{what} {path}: permission denied creating it; choose a folder you can write to") from None
    except OSError as e:
        raise KdpipeError(f"{what} {path}: cannot create it ({e.strerror or e})") from None
    return path
