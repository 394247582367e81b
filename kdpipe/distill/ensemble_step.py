"""The distillation step against several teachers: :class:`DistillStep` with an ensemble target.

Each teacher scores the batch in its own embedding space (its image features against its own class
features, times its own logit scale), over the same classes; :mod:`kdpipe.distill.ensemble` turns
those logits into the target. The student still scores against the PRIMARY teacher's class features
(``class_features``, the first teacher), as in PromptKD. One teacher never comes here: the stage
uses :class:`DistillStep` itself, so a one-teacher run is the single-teacher run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from kdpipe.distill.ensemble import ensemble_logits
from kdpipe.distill.loss import class_logits
from kdpipe.distill.step import AmpFactory, DistillStep
from kdpipe.distill.teacher_source import TeacherFeatures


@dataclass
class EnsembleMember:
    name: str  # for the logs: ``weight:<name>``
    source: TeacherFeatures  # its image features, in its own space
    class_features: torch.Tensor  # [C, D_k], its own stored rows (same classes, same order)
    scale: float  # its logit scale


WEIGHT_LOG = "weight:"  # log key prefix of a teacher's mean ensemble weight over a batch


class EnsembleStep(DistillStep):
    """``step(batch) -> (loss, logs)``: the PromptKD KL loss towards the teachers' ensemble; the logs
    add each teacher's mean weight over the batch (``weight:<name>``)."""

    def __init__(
        self,
        student: torch.nn.Module,
        members: Sequence[EnsembleMember],
        mode: str,
        temperature: float = 1.0,
        weight: float = 1000.0,
        device: str | torch.device = "cpu",
        amp: AmpFactory | None = None,
        loss: str = "kl",
    ):
        primary = members[0]
        super().__init__(student, primary.source, primary.class_features, primary.scale, temperature, weight, device, amp, loss)
        self.members = [
            EnsembleMember(m.name, m.source, m.class_features.to(self.device, torch.float32), float(m.scale)) for m in members
        ]
        self.mode = mode
        self.last_weights: torch.Tensor | None = None  # [K, B] of the last batch

    def teacher_logits(self, images: torch.Tensor, keys) -> torch.Tensor:
        each = [class_logits(m.source(images, keys), m.class_features, m.scale) for m in self.members]
        t, self.last_weights = ensemble_logits(each, self.temperature, self.mode)
        return t

    def __call__(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().__call__(batch)
        for m, w in zip(self.members, self.last_weights.mean(dim=1).tolist()):
            logs[WEIGHT_LOG + m.name] = w
        return loss, logs


def mean_weights(history: Sequence[dict]) -> dict[str, float]:
    """Each teacher's weight averaged over the run: the mean of ``fit``'s per-epoch means."""
    names = sorted({k[len(WEIGHT_LOG):] for row in history for k in row if k.startswith(WEIGHT_LOG)})
    out = {}
    for name in names:
        values = [row[WEIGHT_LOG + name] for row in history if WEIGHT_LOG + name in row]
        out[name] = sum(values) / len(values)
    return out
