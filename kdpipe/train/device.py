"""Where training runs and in which precision.

CPU trains in fp32: bf16 autocast is several times slower than fp32 on most CPUs. CUDA runs under
autocast (bf16 where supported, else fp16 with a grad scaler) while the learned parameters stay fp32
master weights, unlike the reference code's pure fp16 model.
"""

from __future__ import annotations

import contextlib
import os

import torch

from kdpipe.dist import rank_device
from kdpipe.errors import KdpipeError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """The device ``name`` means for this process: under torchrun a bare ``cuda`` is this rank's own
    GPU (:func:`rank_device`), made the current one so NCCL and new tensors land there too."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KdpipeError(f"device {name!r} asked for but no CUDA GPU is visible; use --device cpu or auto")
        device = rank_device(torch.device(name), os.environ, torch.cuda.device_count())
        if device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            torch.cuda.set_device(device)
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise KdpipeError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``, or None where training stays fp32 (CPU)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA, a no-op on CPU."""
    device = pick_device(device) if isinstance(device, str) else device
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool = True) -> bool:
    return enabled and amp_dtype(device) == torch.float16
