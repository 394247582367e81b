"""IVLP: independent deep prompts on both towers (text context + deep text, deep vision), no coupling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.config import bounded
from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import PromptStack, TextContext, deep_prompt_rows, effective_depth
from kdpipe.methods.registry import register_method


@dataclass
class IVLPConfig(MethodConfig):
    description = "independent deep text and vision prompts, no coupling between the towers"
    reference = "muzairkhattak/multimodal-prompt-learning configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml (scripts/independent-vlp/base2new_train_ivlp.sh)"

    n_ctx_text: int = bounded(2, ge=1)  # replaces "a photo", "of a" stays as frozen words
    n_ctx_vision: int = bounded(2, ge=0)  # 0: no vision prompts
    depth_text: int = bounded(12, ge=1)  # input + blocks 1..depth-1; capped at the tower's depth
    depth_vision: int = bounded(12, ge=1)
    ctx_init: str = "a photo of a"  # learned text tokens start from these words ("" = random)
    epochs: int = 5
    batch_size: int = 4
    lr: float = 0.0035

    def prompt_shape(self) -> tuple[str, str]:
        return f"{self.n_ctx_text}+{self.n_ctx_vision}", f"{self.depth_text}/{self.depth_vision}"


@register_method("ivlp")
class IVLP(PromptMethod):
    config_cls = IVLPConfig

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        dims = backbone.dims
        self.depth_text = effective_depth(cfg.depth_text, dims.text_layers)
        self.depth_vision = effective_depth(cfg.depth_vision, dims.vision_layers)
        self.text_ctx = TextContext(backbone, self.clip, len(classnames), cfg.n_ctx_text, cfg.ctx_init)
        self.text_deep = deep_prompt_rows(self.depth_text - 1, cfg.n_ctx_text, dims.text_width)
        self.vision_prompts = PromptStack(self.depth_vision, cfg.n_ctx_vision, dims.vision_width)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        first, deep = self.vision_prompts()
        return F.normalize(self.clip.vision(images, first, deep), dim=-1)

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        deep = list(self.text_deep) if self.text_deep is not None else None
        return self.text_ctx.features(classnames, deep_prompts=deep)
