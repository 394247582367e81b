"""Gaussian prompt aggregation (PromptSRC): a Gaussian-weighted mean of the learned state over epochs."""

from __future__ import annotations

import math

import torch


def gaussian_weights(epochs: int, mean: float, std: float, ref_epochs: int | None = None) -> list[float]:
    """Weights for epochs 1..``epochs`` from N(mean, std), normalised to sum to 1.

    ``mean`` is chosen for ``ref_epochs`` (PromptSRC: mu=15 of 20 epochs). With another epoch count
    it moves proportionally (15/20 of the run) while ``std`` stays in epochs, so a short run still
    averages the same few late epochs instead of landing before its first epoch or after its last.
    """
    if epochs < 1:
        raise ValueError("gaussian_weights needs at least one epoch")
    if std <= 0:
        raise ValueError(f"GPA std must be positive, got {std}")
    if ref_epochs and epochs != ref_epochs:
        mean = mean * epochs / ref_epochs
    # log-space with the max subtracted: a mean far outside 1..epochs must not underflow to all zeros
    logs = [-((e - mean) ** 2) / (2 * std * std) for e in range(1, epochs + 1)]
    top = max(logs)
    w = [math.exp(v - top) for v in logs]
    total = sum(w)
    return [v / total for v in w]


class GaussianAggregate:
    """Running ``sum_e w_e * state_e``; ``add`` after each epoch, ``result`` after the last."""

    def __init__(self, weights: list[float]):
        self.weights = list(weights)
        self.sum: dict[str, torch.Tensor] = {}

    def add(self, epoch: int, state: dict[str, torch.Tensor]) -> None:
        w = self.weights[epoch]
        for k, v in state.items():
            if not torch.is_floating_point(v):
                self.sum[k] = v.detach().clone()  # counters (BatchNorm's num_batches_tracked) keep the last value
            elif k in self.sum:
                self.sum[k] += w * v.detach().float()
            else:
                self.sum[k] = w * v.detach().float()

    def result(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.sum.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.sum)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sum = {k: v.detach().clone() for k, v in state.items()}
