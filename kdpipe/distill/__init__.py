"""PromptKD distillation: the loss, the training step and the source of the teacher's image features."""

from kdpipe.distill.loss import class_logits, kd_loss, top1_agreement
from kdpipe.distill.step import DistillStep, measure_agreement
from kdpipe.distill.teacher_source import ForwardTeacher, TeacherFeatures

__all__ = [
    "DistillStep",
    "ForwardTeacher",
    "TeacherFeatures",
    "class_logits",
    "kd_loss",
    "measure_agreement",
    "top1_agreement",
]
