"""open_clip model configs kdpipe registers: its own (tiny test configs, the demo world's CLIPs)
and any folder a caller adds; the architectures they make known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent.parent / "configs"
# Architectures that ship with kdpipe: the tiny test configs and the demo world's CLIPs. All are
# registered before any spec is parsed, so a saved demo checkpoint loads in a fresh process.
BUILTIN_CONFIG_DIRS = (CONFIG_DIR, Path(__file__).parent.parent.parent / "world" / "configs")
_registered_dirs: set[Path] = set()


def register_config_dir(path: str | Path) -> None:
    """Make every open_clip model config (JSON) in ``path`` available by its file stem."""
    import open_clip

    path = Path(path).resolve()
    if path not in _registered_dirs:
        open_clip.add_model_config(path)
        _registered_dirs.add(path)


def register_builtin_configs() -> None:
    for path in BUILTIN_CONFIG_DIRS:
        if path.is_dir():
            register_config_dir(path)


def known_architectures() -> list[str]:
    import open_clip

    register_builtin_configs()
    return open_clip.list_models()


def model_config(arch: str) -> dict[str, Any] | None:
    """The open_clip JSON config of an architecture, if it is a registered name."""
    import open_clip

    register_builtin_configs()
    cfg = open_clip.get_model_config(arch)
    return json.loads(json.dumps(cfg)) if cfg else None
