"""Shard patterns -> lists of shard URLs.

Accepted: a local ``.tar`` path, a brace pattern (``out/shard-{000000..000009}.tar``), a glob
(``out/*.tar``), a folder written by ``kdpipe shards write`` (its manifest lists the shards) or any
folder of tars, several of these joined with ``::`` or given as a list, and URLs that webdataset's
``gopen`` opens (``pipe:CMD``, ``http(s)://``...). A ``pipe:`` URL runs a shell command, so it is
taken only from the pattern the caller passes in (the user's own command line or config), never
from a manifest or other file read along the way.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import braceexpand

from kdpipe.errors import KdpipeError

MANIFEST = "manifest.json"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_url(spec: str) -> bool:
    """True for ``pipe:`` and scheme URLs (not Windows drive letters or ``file:`` paths)."""
    if spec.startswith("pipe:"):
        return True
    scheme = urlparse(spec).scheme
    return len(scheme) > 1 and scheme != "file"


def _local(spec: str) -> str:
    return spec[len("file://") :] if spec.startswith("file://") else spec[len("file:") :] if spec.startswith("file:") else spec


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KdpipeError(f"cannot read shard manifest {path}: {e}") from None
    return data if isinstance(data, dict) and data.get("format", "").startswith("kdpipe-shards/") else None


def _inside(folder: Path, name: object) -> bool:
    """Whether ``name`` is a plain file name in ``folder`` (no path, no ``..``, no link leading out)."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return False
    target = folder / name
    return not target.is_symlink() or target.resolve().parent == folder.resolve()


def _from_folder(folder: Path) -> list[str]:
    manifest = read_manifest(folder)
    if manifest is not None:
        names = [s.get("name") for s in manifest.get("shards", [])]
        outside = [n for n in names if not _inside(folder, n)]
        if outside:  # a manifest is data, maybe from someone else: it names files in its folder only
            raise KdpipeError(f"{folder / MANIFEST} names a shard outside its folder ({outside[0]!r}); refusing to read it")
        # an interrupted `shards write` still offers the shards it finished
        return [str(folder / n) for n in names if (folder / n).is_file()]
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(TAR_SUFFIXES))


def _expand_one(spec: str) -> list[str]:
    spec = spec.strip()
    if not spec:
        return []
    out = []
    for part in braceexpand.braceexpand(spec):
        if is_url(part):
            out.append(part)
            continue
        path = Path(os.path.expanduser(_local(part)))
        if any(ch in part for ch in "*?["):
            matches = sorted(glob.glob(str(path)))
            if not matches:
                raise KdpipeError(f"shard pattern {part} matches no file")
            out.extend(matches)
        elif path.is_dir():
            found = _from_folder(path)
            if not found:
                raise KdpipeError(f"no .tar shards in {path} (write some with `kdpipe shards write SOURCE {path}`)")
            out.extend(found)
        elif path.name == MANIFEST and path.is_file():
            out.extend(_from_folder(path.parent))
        else:
            out.append(str(path))
    return out


def expand_pattern(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Every shard URL the pattern names, in order; KdpipeError when there are none or local ones are missing."""
    specs = [str(p) for p in pattern] if isinstance(pattern, (list, tuple)) else str(pattern).split("::")
    urls: list[str] = []
    for spec in specs:
        urls.extend(_expand_one(spec))
    if not urls:
        raise KdpipeError(f"shard pattern {pattern!r} names no shards")
    missing = [u for u in urls if not is_url(u) and not os.path.isfile(u)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise KdpipeError(f"shard {missing[0]}{more} not found (pattern {pattern!r} expands to {len(urls)} shards)")
    return urls


def expected_counts(urls: Sequence[str]) -> dict[str, int]:
    """Sample counts that manifests next to local shards promise, to notice tars that end early."""
    counts: dict[str, int] = {}
    manifests: dict[Path, dict | None] = {}
    for url in urls:
        if is_url(url):
            continue
        path = Path(url)
        if path.parent not in manifests:
            try:
                manifests[path.parent] = read_manifest(path.parent)
            except KdpipeError:
                manifests[path.parent] = None
        manifest = manifests[path.parent]
        if manifest:
            for shard in manifest.get("shards", []):
                if shard.get("name") == path.name and isinstance(shard.get("count"), int):
                    counts[url] = shard["count"]
    return counts
