"""Which epoch's weights a training run keeps: ``last`` or ``best_val`` (``distill.select``).

- ``last``: the weights after the last epoch (the default; DESIGN §4's rule for the few-shot
  methods, and Dassl's ``TEST.FINAL_MODEL = last_step``, which the PromptSRC teacher and the
  baselines' reference configs keep).
- ``best_val``: PromptKD's own configs set ``TEST.FINAL_MODEL: best_val``: after every epoch the
  model is scored on a held-out LABELLED split (never the test split) and the best epoch's
  weights are kept. As in Dassl, an epoch must score strictly higher to win, so on a tie the
  earlier epoch stays.

A selector is fed by ``fit``'s ``after_epoch`` callback, which runs before the epoch's checkpoint:
the best state so far lives beside the checkpoints (``best.safetensors``, scores inside), so a run
resumed after a crash keeps the epoch that was best before it. Scoring runs with the RNG state
saved and restored, so ``best_val`` trains exactly the weights ``last`` does and only picks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.io import read_tensors, write_tensors

BEST_FILE = "best.safetensors"


class LastEpoch:
    """``last``: keeps what training ends with, epoch ``epochs``."""

    rule = "last"

    def __init__(self, module: nn.Module, epochs: int, score: Callable[[], float] | None = None,
                 folder: str | Path | None = None, write: bool = True):
        self.epochs = epochs

    def after_epoch(self, epoch: int) -> None:
        pass

    def finish(self) -> dict:
        return {"select": self.rule, "selected_epoch": self.epochs}


class BestValEpoch:
    """``best_val``: after each epoch, ``score()`` (higher is better, e.g. held-out accuracy) and a
    copy of the module's state when it beats every earlier epoch; :meth:`finish` loads that state."""

    rule = "best_val"

    def __init__(self, module: nn.Module, epochs: int, score: Callable[[], float],
                 folder: str | Path | None = None, write: bool = True):
        self.module = module
        self.score = score
        self.path = Path(folder) / BEST_FILE if folder is not None else None
        self.write = write  # rank 0 only, like the loop's checkpoints
        self.best_epoch = 0
        self.best_score = float("-inf")
        self.scores: dict[int, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        if self.path is not None and self.path.is_file():
            tensors, meta = read_tensors(self.path)
            self.state = tensors
            self.best_epoch, self.best_score = int(meta["epoch"]), float(meta["score"])
            self.scores = {int(k): float(v) for k, v in meta["scores"].items()}

    def after_epoch(self, epoch: int) -> None:
        with torch.random.fork_rng(devices=_cuda_devices()):
            value = float(self.score())
        self.scores[epoch] = value
        if value > self.best_score:
            self.best_epoch, self.best_score = epoch, value
            self.state = {k: v.detach().cpu().clone() for k, v in _state(self.module).items()}
            if self.path is not None and self.write:
                write_tensors(self.path, self.state, {"epoch": epoch, "score": value, "scores": self.scores})

    def finish(self) -> dict:
        if self.state is None:
            raise KdpipeError("distill.select = best_val scored no epoch; is the held-out labelled split empty?")
        _load_state(self.module, self.state)
        return {"select": self.rule, "selected_epoch": self.best_epoch, "selected_score": self.best_score,
                "epoch_scores": {str(k): v for k, v in sorted(self.scores.items())}}


SELECTORS = {cls.rule: cls for cls in (LastEpoch, BestValEpoch)}


def make_selector(rule: str, module: nn.Module, epochs: int, score: Callable[[], float] | None = None,
                  folder: str | Path | None = None, write: bool = True):
    """The selector of ``rule`` for ``module`` trained ``epochs`` epochs; ``score``: higher is better."""
    if rule not in SELECTORS:
        raise KdpipeError(f"unknown model selection {rule!r}; choose from: {', '.join(SELECTORS)}")
    return SELECTORS[rule](module, epochs, score, folder, write)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    if hasattr(module, "train_state_dict"):
        return module.train_state_dict()
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _load_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if hasattr(module, "load_train_state_dict"):
        device = next(module.parameters()).device
        module.load_train_state_dict({k: v.to(device) for k, v in state.items()})
        return
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
