"""VPT: learned vision prompts (shallow: input only; deep: every block up to ``depth``), fixed hand text."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError
from kdpipe.config import bounded
from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import PromptStack, effective_depth, hand_prompt_features
from kdpipe.methods.registry import register_method


@dataclass
class VPTConfig(MethodConfig):
    description = "vision-only prompts (shallow or deep) with the fixed text prompt 'a photo of a {}.'"
    reference = "muzairkhattak/multimodal-prompt-learning configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml (scripts/vpt/base2new_train_vpt.sh)"

    n_ctx: int = bounded(8, ge=0)  # vision prompt tokens per layer (0 = none: plain zero-shot CLIP)
    depth: int = bounded(12, ge=1)  # 1 = shallow VPT; capped at the vision tower's depth
    template: str = "a photo of a {}."
    epochs: int = 5
    batch_size: int = 4
    lr: float = 0.0025

    def prompt_shape(self) -> tuple[str, str]:
        return f"{self.n_ctx} vision", f"{self.depth} vision"

    def validate(self) -> None:
        super().validate()
        if "{}" not in self.template:
            raise KdpipeError(f"template {self.template!r} needs a {{}} where the class name goes")


@register_method("vpt")
class VPT(PromptMethod):
    config_cls = VPTConfig
    learns_text = False

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        self.depth = effective_depth(cfg.depth, backbone.dims.vision_layers)
        self.vision_prompts = PromptStack(self.depth, cfg.n_ctx, backbone.dims.vision_width) if cfg.n_ctx else None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vision_prompts is None:
            return super().encode_images(images)
        first, deep = self.vision_prompts()
        return F.normalize(self.clip.vision(images, first, deep), dim=-1)

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        return hand_prompt_features(self.backbone, self.clip, classnames, [self.cfg.template])
