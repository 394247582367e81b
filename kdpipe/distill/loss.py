"""The PromptKD distillation loss, reduced exactly as the reference code reduces it (DESIGN §6).

    s = scale_s * norm(student_features) @ T.T        (student features already projected)
    t = scale_t * norm(teacher_features) @ T.T
    loss = w * tau^2 * KL(softmax(t / tau) || softmax(s / tau)), summed over batch and classes
           and divided by B * C

Dividing the summed KL by B*C (rather than by B, as ``reduction="batchmean"`` would) is what the
reference does; the large default weight (1000) compensates, so changing the reduction would
silently change the effective learning rate. Both logit tensors are computed in fp32 so that the
loss is the same under autocast as on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_logits(features: torch.Tensor, class_features: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``scale * norm(features) @ class_features.T`` in fp32 (class features are stored normalised)."""
    features = F.normalize(features.float(), dim=-1)
    return features @ class_features.float().t() * scale


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    weight: float = 1000.0,
) -> torch.Tensor:
    """``weight * tau^2 * KL(teacher || student)`` summed and divided by ``B * C``; teacher is detached."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    tau = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    return weight * tau * tau * kl / student_logits.numel()


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[int, int]:
    """(number of rows where both pick the same class, number of rows)."""
    same = (student_logits.argmax(dim=-1) == teacher_logits.argmax(dim=-1)).sum().item()
    return int(same), int(student_logits.shape[0])
