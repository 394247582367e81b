"""SGD with a constant warm-up, then cosine annealing stepped once per epoch (the CoOp/Dassl schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from kdpipe.errors import KdpipeError


@dataclass
class OptimConfig:
    lr: float  # peak learning rate, reached right after the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # epochs at the constant warmup_lr
    warmup_lr: float = 1e-5

    @classmethod
    def from_method_config(cls, cfg) -> "OptimConfig":
        return cls(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr)


def lr_at(epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Learning rate for ``epoch`` (from 0).

    Dassl's ConstantWarmupScheduler wraps CosineAnnealingLR(T_max=epochs) and starts stepping the
    cosine only after the warm-up, so the first epoch after warm-up sits at t=1 and the last epoch
    keeps a small non-zero rate. We reproduce that schedule exactly.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    t = epoch - cfg.warmup_epochs + 1 if cfg.warmup_epochs > 0 else epoch
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * t / max(epochs, 1)))


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.SGD:
    params = list(params)
    if not params:
        raise KdpipeError("nothing to optimise: the method has no learned parameters")
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
