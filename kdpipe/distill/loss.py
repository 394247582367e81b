"""The PromptKD distillation loss, reduced exactly as the reference code reduces it (DESIGN §6).

    s = scale_s * norm(student_features) @ T.T        (student features already projected)
    t = scale_t * norm(teacher_features) @ T.T
    loss = w * tau^2 * D(softmax(t / tau), softmax(s / tau)), summed over batch and classes
           and divided by B * C

``D`` comes from :data:`LOSSES` (``distill.loss``):

- ``kl`` (the reference): ``KL(p_t || p_s)``;
- ``symmetric_kl`` (KDPL, ECCV 2024): ``0.5 * KL(p_t || p_s) + 0.5 * KL(p_s || p_t)``, KDPL's own
  halves (its ``alfa = beta = 0.5``), so near the target it is on the scale of ``kl`` and the same
  weight ``w`` applies. The reverse term pulls the student's mass off classes the teacher rules out.

Dividing the summed divergence by B*C (rather than by B, as ``reduction="batchmean"`` would) is what
the reference does; the large default weight (1000) compensates, so changing the reduction would
silently change the effective learning rate. Both logit tensors are computed in fp32 so that the
loss is the same under autocast as on CPU.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError

# name -> (student log-probs [B, C], teacher log-probs [B, C], detached) -> divergence summed over B and C
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def divergence(name: str):
    def wrap(fn):
        LOSSES[name] = fn
        return fn

    return wrap


@divergence("kl")
def forward_kl(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """``sum p_t (log p_t - log p_s)``: the reference's ``KL(teacher || student)``."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)


@divergence("symmetric_kl")
def symmetric_kl(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """KDPL's ``0.5 * KL(teacher || student) + 0.5 * KL(student || teacher)``."""
    reverse = F.kl_div(log_p_teacher, log_p_student, reduction="sum", log_target=True)
    return 0.5 * forward_kl(log_p_student, log_p_teacher) + 0.5 * reverse


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise KdpipeError(f"unknown distill.loss {name!r}; choose from: {', '.join(sorted(LOSSES))}")
    return name


def class_logits(features: torch.Tensor, class_features: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``scale * norm(features) @ class_features.T`` in fp32 (class features are stored normalised)."""
    features = F.normalize(features.float(), dim=-1)
    return features @ class_features.float().t() * scale


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    weight: float = 1000.0,
    loss: str = "kl",
) -> torch.Tensor:
    """``weight * tau^2 * D(teacher, student)`` summed and divided by ``B * C``; teacher is detached;
    ``D`` is ``LOSSES[loss]``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    tau = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    total = LOSSES[check_loss(loss)](log_p_student, log_p_teacher)
    return weight * tau * tau * total / student_logits.numel()


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[int, int]:
    """(number of rows where both pick the same class, number of rows)."""
    same = (student_logits.argmax(dim=-1) == teacher_logits.argmax(dim=-1)).sum().item()
    return int(same), int(student_logits.shape[0])
