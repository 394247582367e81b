"""The distillation target of several teachers: an ensemble of their softened probabilities.

Teacher ``k`` gives logits ``t_k`` over the same C classes, each computed in its own embedding
space (its image features against its own class features, times its own logit scale). With
``p_k = softmax(t_k / tau)``, the target is

    p = sum_k w_k * p_k,     w_k >= 0,  sum_k w_k = 1  (per image)

and the weights come from :data:`ENSEMBLES` (``teacher.ensemble``):

- ``mean``: ``w_k = 1 / K`` for every image;
- ``confidence``: ``w_k = max_c p_k[c] / sum_j max_c p_j[c]``, per image (a teacher sure of an
  image counts more on it; "The Professor", arXiv 2606.23897).

:func:`ensemble_logits` returns ``tau * log p``: logits whose softmax at temperature ``tau`` is
``p``, so the PromptKD loss (:func:`kdpipe.distill.loss.kd_loss`) and the agreement probe take the
ensemble as they take one teacher's logits.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from kdpipe.errors import KdpipeError

# name -> (probabilities [K, B, C] -> weights [K, B], each column summing to 1)
ENSEMBLES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def ensemble(name: str):
    def wrap(fn):
        ENSEMBLES[name] = fn
        return fn

    return wrap


@ensemble("mean")
def mean_weights(probs: torch.Tensor) -> torch.Tensor:
    return torch.full(probs.shape[:2], 1.0 / probs.shape[0], dtype=probs.dtype, device=probs.device)


@ensemble("confidence")
def confidence_weights(probs: torch.Tensor) -> torch.Tensor:
    confidence = probs.amax(dim=-1)  # [K, B]: each teacher's max probability on each image
    return confidence / confidence.sum(dim=0, keepdim=True)


def ensemble_weights(teacher_logits: Sequence[torch.Tensor], temperature: float, mode: str) -> torch.Tensor:
    """Per-image teacher weights ``[K, B]`` of ensemble ``mode`` for ``K`` teachers' ``[B, C]`` logits."""
    return _weights(_log_probs(teacher_logits, temperature).exp(), mode)


def ensemble_logits(teacher_logits: Sequence[torch.Tensor], temperature: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(``tau * log p`` ``[B, C]``, weights ``[K, B]``): the target of the module docs, as logits."""
    tau = float(temperature)
    log_p = _log_probs(teacher_logits, tau)  # [K, B, C]
    weights = _weights(log_p.exp(), mode)
    # log sum_k w_k p_k, computed in log space: a confident teacher's tiny probabilities stay finite
    log_target = torch.logsumexp(log_p + weights.log().unsqueeze(-1), dim=0)
    return tau * log_target, weights


def _log_probs(teacher_logits: Sequence[torch.Tensor], tau: float) -> torch.Tensor:
    if not teacher_logits:
        raise KdpipeError("an ensemble needs at least one teacher")
    shapes = {tuple(t.shape) for t in teacher_logits}
    if len(shapes) != 1:
        raise KdpipeError(f"the teachers' logits differ in shape: {sorted(shapes)}; they must score the same classes")
    if not math.isfinite(tau) or tau <= 0:
        raise KdpipeError(f"temperature must be a positive number, got {tau}")
    return torch.log_softmax(torch.stack([t.detach().float() for t in teacher_logits]) / tau, dim=-1)


def _weights(probs: torch.Tensor, mode: str) -> torch.Tensor:
    if mode not in ENSEMBLES:
        raise KdpipeError(f"unknown teacher ensemble {mode!r}; choose from: {', '.join(sorted(ENSEMBLES))}")
    return ENSEMBLES[mode](probs)
