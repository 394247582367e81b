"""A method's learned state on disk: one safetensors file whose metadata says what it belongs to."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kdpipe.errors import KdpipeError

_META_KEY = "kdpipe_method"


def save_learned(method, path: str | Path) -> Path:
    """Write ``method.learned_state_dict()`` with ``checkpoint_meta()``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in method.learned_state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(method.checkpoint_meta())})
    os.replace(tmp, path)
    return path


def read_learned(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The learned state and its metadata (which method, backbone, classes, config)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"method state {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError) as e:
        raise KdpipeError(f"{path} is not a readable kdpipe method state ({e})") from None
    if not isinstance(meta, dict):
        raise KdpipeError(f"{path} is a safetensors file but not a kdpipe method state (no {_META_KEY} metadata)")
    return state, meta


def load_learned(method, path: str | Path) -> None:
    """Load a saved state into ``method``, refusing another method, backbone or class count."""
    state, meta = read_learned(path)
    method.load_learned_state_dict({k: v.to(method.device) for k, v in state.items()}, meta)
