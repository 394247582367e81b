"""``torch.compile`` for classify's image encoder at one fixed batch size, where it was measured to pay.

A compiled graph is specialised to its input shape: a smaller last batch (or a batch that lost
unreadable images) would compile again, which costs as much as the first time (~30 s for ViT-B/16
on 2 CPU cores). :class:`FixedBatch` pads such batches to the size it was built for and cuts the
rows back, so one graph serves the whole run; on CUDA ``mode="max-autotune"`` adds CUDA graphs,
which need that fixed shape too.

Whether compiling pays is per precision and device (``Precision.compile_on``, measured with
``kdpipe bench classify``); when it is skipped or fails, one log line says why and the encoder
runs eagerly. ``KDPIPE_COMPILE=0`` (or ``kdpipe classify --no-compile``) turns it off.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Callable

import torch

log = logging.getLogger("kdpipe.classify")

ENV_SWITCH = "KDPIPE_COMPILE"  # "0": never compile


def skip_reason(precision: str, device: torch.device, enabled: bool = True) -> str | None:
    """Why the encoder is not compiled for ``precision`` on ``device``, or None when it is."""
    from kdpipe.infer.precision import PRECISIONS

    if not enabled:
        return "turned off (--no-compile)"
    if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no", "off"):
        return f"turned off ({ENV_SWITCH}={os.environ[ENV_SWITCH]})"
    if device.type not in PRECISIONS[precision].compile_on:
        return f"not measured to pay for {precision} on {device.type}"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler on the PATH (inductor builds CPU kernels with one)"
    return None


def compile_encoder(fn: Callable[[torch.Tensor], torch.Tensor], batch: int, precision: str, device: torch.device,
                    enabled: bool = True, say: Callable[[str], None] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` compiled for batches of ``batch`` images where that pays, else ``fn``; ``say`` (default:
    the ``kdpipe.classify`` log) gets one line when compiling is skipped or fails."""
    say = say or log.info
    reason = skip_reason(precision, device, enabled)
    if reason is not None:
        say(f"torch.compile skipped: {reason}")
        return fn
    mode = "max-autotune" if device.type == "cuda" else None  # CUDA graphs at the fixed batch
    return FixedBatch(torch.compile(fn, dynamic=False, mode=mode), fn, batch, say)


class FixedBatch:
    """Calls ``compiled`` on batches of exactly ``size`` images: smaller ones are padded with zeros
    (their rows dropped from the output), larger ones split. If the first call fails to compile,
    one log line says why and ``eager`` serves from then on."""

    def __init__(self, compiled: Callable, eager: Callable, size: int, say: Callable[[str], None] | None = None):
        self.compiled, self.eager, self.size, self.say = compiled, eager, int(size), say or log.warning
        self.failed: str | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(images)
        if len(images) > self.size:
            return torch.cat([self(part) for part in images.split(self.size)])
        n = len(images)
        if n < self.size:
            images = torch.cat([images, images.new_zeros(self.size - n, *images.shape[1:])])
        try:
            out = self.compiled(images)
        except Exception as e:  # noqa: BLE001  (inductor's errors have no common base; eager still works)
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self.say(f"torch.compile failed ({self.failed}); running eagerly")
            return self.eager(images[:n])
        # a copy: under CUDA graphs the next call overwrites the graph's output buffer
        return out[:n].clone()
