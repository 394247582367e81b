"""Where pretrained world checkpoints are kept between runs, keyed by what produced them.

``$KDPIPE_CACHE`` if set, else ``$XDG_CACHE_HOME/kdpipe``, else ``~/.cache/kdpipe``; world
checkpoints live under ``<cache>/world/<fingerprint>/``. The fingerprint hashes everything that
changes the weights (architecture config, render version, seed, schedule), so a stale entry is
never reused and a second demo on the same machine skips pretraining.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    if os.environ.get("KDPIPE_CACHE"):
        return Path(os.environ["KDPIPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "kdpipe"
    return Path.home() / ".cache" / "kdpipe"


def world_cache_dir(fingerprint: str) -> Path:
    return cache_root() / "world" / fingerprint


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
