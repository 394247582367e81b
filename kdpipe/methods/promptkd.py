"""The PromptKD student: deep vision prompts and a projector to the teacher's feature space.

It has no text tower at all: it scores images against class features it is given (the teacher's,
computed once by the text-features stage), with the student CLIP's own logit scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.config import bounded
from kdpipe.errors import KdpipeError
from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import PromptStack, effective_depth
from kdpipe.methods.registry import register_method


@dataclass
class PromptKDConfig(MethodConfig):
    description = "PromptKD student: deep vision prompts + projector to the teacher's space; no text tower"
    reference = "zhengli97/PromptKD configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml + scripts/promptkd/base2new_train.sh (KD weight 1000, T 1)"
    departs = (
        "keeps the last epoch where the reference keeps its best-validation one (nothing is selected on "
        "evaluation data); AMP with fp32 master weights instead of pure fp16"
    )

    # the pipeline's student and distill sections take their defaults from these (one source)
    n_ctx: int = bounded(4, ge=1)  # vision prompt tokens per depth
    depth: int = bounded(9, ge=1)  # 9 base-to-novel, 3 cross-dataset; capped at the vision tower's depth
    teacher_dim: int = bounded(768, ge=1)  # the teacher's embed dim (768 for ViT-L/14)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 0.005

    def prompt_shape(self) -> tuple[str, str]:
        return f"{self.n_ctx} vision", f"{self.depth} vision"


@register_method("promptkd")
class PromptKD(PromptMethod):
    config_cls = PromptKDConfig
    needs_class_features = True

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        dims = backbone.dims
        self.depth = effective_depth(cfg.depth, dims.vision_layers)
        self.vision_prompts = PromptStack(self.depth, cfg.n_ctx, dims.vision_width)
        t = cfg.teacher_dim
        self.projector = nn.Sequential(nn.Linear(dims.embed_dim, t), nn.BatchNorm1d(t), nn.ReLU(inplace=True), nn.Linear(t, t))
        # the teacher's class features, when given: a fixed input, not learned state
        self.register_buffer("teacher_features", None, persistent=False)

    def set_class_features(self, features: torch.Tensor) -> None:
        """Score against these teacher class features ``[C, teacher_dim]`` (L2-normalised here)."""
        if features.dim() != 2 or features.shape[1] != self.cfg.teacher_dim or features.shape[0] != len(self.classnames):
            raise KdpipeError(
                f"teacher class features have shape {tuple(features.shape)}, this student needs "
                f"[{len(self.classnames)}, {self.cfg.teacher_dim}] (its classes x teacher_dim)"
            )
        self.teacher_features = F.normalize(features.detach().float(), dim=-1).to(self.device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected, L2-normalised image features ``[B, teacher_dim]``."""
        first, deep = self.vision_prompts()
        return F.normalize(self.projector(self.clip.vision(images, first, deep)), dim=-1)

    def class_features(self, classnames: list[str] | None = None) -> torch.Tensor:
        if self.teacher_features is None:
            raise KdpipeError("promptkd has no text tower: give it the teacher's class features (set_class_features or class_features=)")
        if classnames is not None and list(classnames) != self.classnames:
            raise KdpipeError("promptkd scores only the classes of its teacher features; pass class_features= for other classes")
        return self.teacher_features
