"""Files written so that a reader never sees half of one: the one atomic writer kdpipe uses.

Everything goes through a temporary sibling and ``os.replace``: a crash, a kill or a full disk
leaves the old file or none, never a torn one. JSON and safetensors (tensors with JSON metadata,
never pickle) are the only formats kdpipe writes for itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
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
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
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


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors as safetensors, atomically and with the user's umask (safetensors itself writes 0600)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
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

    from kdpipe.errors import KdpipeError

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
    from kdpipe.errors import KdpipeError

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
