"""Where the teacher's image features come from during distillation.

The distillation step only ever asks a :class:`TeacherFeatures` for the L2-normalised image
features of the batch it is training on; it never sees the teacher model. Today the answer is a
forward pass of the frozen prompted teacher (:class:`ForwardTeacher`); a cache of features computed
once per stored view can implement the same call later without touching the step or the loop.
The teacher's text side is not needed here at all: its class features were computed once by the
``text-features`` stage and are passed to the step as a tensor.

:func:`forward_teacher` is the one way the stages build that source for a student (``distill``,
each teacher of an ensemble, ``teacher-cache``): the batch adapted to the teacher's inputs, under
autocast when AMP is on.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TeacherFeatures(Protocol):
    """``(images [B,3,H,W], keys) -> [B, D]`` L2-normalised teacher image features, no gradient."""

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor: ...


class ForwardTeacher:
    """Runs the frozen prompted teacher's image tower on every batch (the reference behaviour)."""

    def __init__(
        self,
        teacher: nn.Module,
        amp: Callable[[], contextlib.AbstractContextManager] | None = None,
        adapt: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        # eval() for good: the teacher's prompts and any BatchNorm/dropout must not move
        self.teacher = teacher.eval().requires_grad_(False)
        self._amp = amp or contextlib.nullcontext
        # resizes/renormalises the student's batch when the teacher expects other inputs
        self._adapt = adapt

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        if self._adapt is not None:
            images = self._adapt(images)
        with self._amp():
            features = self.teacher.encode_images(images)
        return F.normalize(features.float(), dim=-1)


def forward_teacher(teacher: nn.Module, student_backbone, device, amp: bool) -> ForwardTeacher:
    """``teacher`` as the source of features for ``student_backbone``'s batches on ``device``."""
    from kdpipe.train import autocast

    return ForwardTeacher(teacher, amp=(lambda: autocast(device, amp)) if amp else None,
                          adapt=teacher_input(teacher.backbone, student_backbone))


def teacher_input(teacher_backbone, student_backbone) -> Callable | None:
    """Adapt the student's batch to the teacher when their resolution or normalisation differ."""
    tb, sb = teacher_backbone, student_backbone
    same_size = tb.dims.image_size == sb.dims.image_size
    same_norm = tuple(tb.mean) == tuple(sb.mean) and tuple(tb.std) == tuple(sb.std)
    if same_size and same_norm:
        return None

    def adapt(images):
        if not same_norm:
            s_mean = torch.tensor(sb.mean, device=images.device).view(1, 3, 1, 1)
            s_std = torch.tensor(sb.std, device=images.device).view(1, 3, 1, 1)
            t_mean = torch.tensor(tb.mean, device=images.device).view(1, 3, 1, 1)
            t_std = torch.tensor(tb.std, device=images.device).view(1, 3, 1, 1)
            images = ((images * s_std + s_mean) - t_mean) / t_std
        if not same_size:
            images = F.interpolate(images, size=(tb.dims.image_size, tb.dims.image_size), mode="bicubic", align_corners=False)
        return images

    return adapt
