"""Atomic training checkpoints: tensors in safetensors, everything else in JSON.

Layout in ``ckpt_dir``: ``ckpt-<step>.safetensors`` (state, optimizer buffers, RNG states) and
``last.json`` naming it. The tensors are written first, then ``last.json`` is replaced atomically,
then older tensor files are removed, so a kill at any moment leaves a complete, consistent pair.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdpipe.errors import KdpipeError
from kdpipe.io import read_json, read_tensors, write_json, write_tensors

POINTER = "last.json"


def save_checkpoint(ckpt_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    ckpt_dir = Path(ckpt_dir)
    name = f"ckpt-{step:09d}.safetensors"
    write_tensors(ckpt_dir / name, tensors)
    write_json(ckpt_dir / POINTER, {**meta, "tensors": name}, sort_keys=True)
    for old in ckpt_dir.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return ckpt_dir / name


def load_checkpoint(ckpt_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The last checkpoint in ``ckpt_dir``, or None when there is none yet."""
    pointer = Path(ckpt_dir) / POINTER
    if not pointer.is_file():
        return None
    try:
        meta = read_json(pointer)
        tensors, _ = read_tensors(Path(ckpt_dir) / meta["tensors"])
    except (OSError, ValueError, KeyError) as e:
        raise KdpipeError(f"checkpoint in {ckpt_dir} is unreadable ({type(e).__name__}: {e}); delete the folder to start over") from None
    return tensors, meta


# ---- RNG state: torch (CPU + CUDA), Python and NumPy, so a resumed run draws the same numbers ----
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py = random.getstate()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resumed_step(ckpt_dir: str | Path) -> int:
    """Optimizer steps already done according to the last checkpoint in ``ckpt_dir`` (0: none)."""
    try:
        return int(read_json(Path(ckpt_dir) / POINTER)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
