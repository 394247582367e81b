"""One distillation step and the student-teacher agreement probe, independent of the training loop.

The step sees a batch ``(images, keys, ...)`` from the unlabeled stream and returns
``(loss, logs)``, which is all ``kdpipe.train.fit`` needs; the same augmented images go to the
teacher source and to the student. Nothing here knows about ranks, so the step runs unchanged
under ``torchrun``: the stream splits shards by rank and the loop synchronises gradients.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from kdpipe.distill.loss import check_loss, class_logits, kd_loss, top1_agreement
from kdpipe.distill.teacher_source import TeacherFeatures

AmpFactory = Callable[[], contextlib.AbstractContextManager]


class DistillStep:
    """``step(batch) -> (loss, logs)`` for the PromptKD loss (``kl`` or another of ``LOSSES``) against
    fixed teacher class features."""

    def __init__(
        self,
        student: nn.Module,
        teacher: TeacherFeatures,
        class_features: torch.Tensor,
        teacher_scale: float,
        temperature: float = 1.0,
        weight: float = 1000.0,
        device: str | torch.device = "cpu",
        amp: AmpFactory | None = None,
        loss: str = "kl",
    ):
        self.student = student
        self.teacher = teacher
        self.device = torch.device(device)
        self.class_features = class_features.to(self.device, torch.float32)
        self.teacher_scale = float(teacher_scale)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.loss = check_loss(loss)  # distill.loss: the divergence of kdpipe.distill.loss.LOSSES
        self.amp = amp or contextlib.nullcontext
        self.last_batch_size = 0  # for images/s in progress displays
        # the student's own frozen CLIP temperature, as the reference uses it: read once, not per
        # step (a float() of a device tensor would stall every step's forward until it is done)
        self.student_scale = float(student.clip.logit_scale)

    def teacher_logits(self, images: torch.Tensor, keys) -> torch.Tensor:
        """The target logits ``[B, C]`` in fp32 for one batch already on the device."""
        return class_logits(self.teacher(images, keys), self.class_features, self.teacher_scale)

    def logits(self, images: torch.Tensor, keys) -> tuple[torch.Tensor, torch.Tensor]:
        """(student logits, teacher logits) in fp32 for one batch already on the device."""
        t = self.teacher_logits(images, keys)
        with self.amp():
            student_features = self.student.encode_images(images)
        s = class_logits(student_features, self.class_features, self.student_scale)
        return s, t

    def __call__(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        images, keys = batch[0], batch[1]
        images = images.to(self.device, non_blocking=True)
        self.last_batch_size = int(images.shape[0])
        s, t = self.logits(images, keys)
        loss = kd_loss(s, t, self.temperature, self.weight, self.loss)
        same, n = top1_agreement(s.detach(), t)
        return loss, {"kd_loss": float(loss.detach()), "agreement": same / max(n, 1)}


@torch.no_grad()
def measure_agreement(step: DistillStep, batches: Iterable) -> dict[str, float | None]:
    """Top-1 agreement and mean KD loss of the student (in eval mode) with the teacher over ``batches``
    (None for both when there are no images)."""
    student = step.student
    was_training = student.training
    student.eval()
    same = total = 0
    loss_sum = 0.0
    try:
        for batch in batches:
            images = batch[0].to(step.device, non_blocking=True)
            s, t = step.logits(images, batch[1])
            a, n = top1_agreement(s, t)
            same, total = same + a, total + n
            loss_sum += float(kd_loss(s, t, step.temperature, step.weight, step.loss)) * n
    finally:
        student.train(was_training)
    if total == 0:
        return {"agreement": None, "kd_loss": None, "images": 0}
    return {"agreement": same / total, "kd_loss": loss_sum / total, "images": total}
