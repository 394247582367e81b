"""Identities: of files (sha256), of JSON values (a canonical sha256) and of folders of user data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kdpipe.config import jsonable
from kdpipe.errors import KdpipeError
from kdpipe.io import json_default


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a JSON value in canonical form."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dir_listing(root: str | os.PathLike, pattern: str = "**/*") -> list[tuple[str, int, int]]:
    """The identity of a folder of user data: (relative path, size, mtime in ns) of every file.

    Cheap (no file is read) and changes whenever a file is added, removed or rewritten; use it as
    (part of) a stage's ``identity``. A missing folder raises KdpipeError.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise KdpipeError(f"data folder {root} does not exist; pass the right --data-root")
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    out = []
    for p in sorted(root.glob(pattern)):
        if p.is_file():
            st = p.stat()
            out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


