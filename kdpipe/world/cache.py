"""Where pretrained world checkpoints are kept between runs, keyed by what produced them.

``$KDPIPE_CACHE`` if set, else ``$XDG_CACHE_HOME/kdpipe``, else ``~/.cache/kdpipe``; world
checkpoints live under ``<cache>/world/<fingerprint>/``. The fingerprint hashes everything that
changes the weights (architecture config, render version, seed, schedule), so a stale entry is
never reused and a second demo on the same machine skips pretraining.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("KDPIPE_CACHE"):
        return Path(os.environ["KDPIPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "kdpipe"
    return Path.home() / ".cache" / "kdpipe"


def world_cache_dir(fingerprint: str) -> Path:
    return cache_root() / "world" / fingerprint
