"""CoOp: learned text context in front of (around, after) the class name; the image side is plain CLIP."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdpipe.methods.base import PromptMethod
from kdpipe.config import bounded
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import TextContext
from kdpipe.methods.registry import register_method


@dataclass
class CoOpConfig(MethodConfig):
    description = "learned text context shared by classes (or per class), class at end/middle/front"
    dataset_defaults = {"imagenet": {"epochs": 50}}
    reference = "KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16_ctxv1.yaml (ImageNet: vit_b16_ep50_ctxv1.yaml; scripts/cocoop/base2new_train.sh)"

    n_ctx: int = bounded(4, ge=1)
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02) init
    class_specific: bool = False  # one context per class (CSC) instead of one shared
    class_position: str = "end"  # "end", "middle" or "front"
    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.002

    def prompt_shape(self) -> tuple[str, str]:
        return str(self.n_ctx), "1"


@register_method("coop")
class CoOp(PromptMethod):
    config_cls = CoOpConfig

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        self.text_ctx = TextContext(
            backbone, self.clip, len(classnames), cfg.n_ctx, cfg.ctx_init, cfg.class_specific, cfg.class_position
        )

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        return self.text_ctx.features(classnames)
