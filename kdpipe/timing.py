"""Wall time of one call, for the ``kdpipe bench`` commands (each compares two ways in one run)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def per_call_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean milliseconds of ``fn()`` over ``repeats`` calls after one warm-up (thread pools,
    allocations), with CUDA work finished before the clock stops."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats * 1000
