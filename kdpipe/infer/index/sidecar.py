"""The JSON description saved beside a class index (``PATH.json``): kind, storage, sizes, knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.io import read_json

SIDECAR_FORMAT = "kdpipe-class-index"
SIDECAR_VERSION = 1


def damaged_index(path: Path, reason: str) -> KdpipeError:
    """The one line for an index file that cannot be what its sidecar says (a bundle adds which bundle)."""
    err = KdpipeError(f"class index {path} is damaged ({reason}); write it again (re-export its bundle, or re-run the stage that wrote it)")
    err.damage = reason  # what a bundle's own message repeats
    return err


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The description :meth:`ClassIndex.save` wrote beside the index at ``path`` (kind, storage, sizes)."""
    side = sidecar_path(path)
    try:
        meta = read_json(side)
    except (OSError, ValueError) as e:
        raise KdpipeError(f"{side} is not a readable class-index sidecar ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or int(meta.get("version", 0)) > SIDECAR_VERSION:
        found = meta if isinstance(meta, dict) else {}
        raise KdpipeError(f"{side} is not a kdpipe class index of a version this kdpipe reads (found {found.get('format')} v{found.get('version')})")
    return meta
