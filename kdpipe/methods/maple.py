"""MaPLe: deep text prompts; the vision prompts at every depth are a Linear map of the text ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.config import bounded
from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import TextContext, deep_prompt_rows, effective_depth
from kdpipe.methods.registry import register_method


@dataclass
class MaPLeConfig(MethodConfig):
    description = "deep text prompts; vision prompts = one Linear(text->vision) per depth of the text prompts"
    reference = "muzairkhattak/multimodal-prompt-learning configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml (scripts/maple/base2new_train_maple.sh)"

    n_ctx: int = bounded(2, ge=1)  # replaces "a photo", "of a" stays as frozen words
    depth: int = bounded(9, ge=1)  # same depth on both towers; capped at the shallower tower
    ctx_init: str = "a photo of a"
    epochs: int = 5
    batch_size: int = 4
    lr: float = 0.0035

    def prompt_shape(self) -> tuple[str, str]:
        return f"{self.n_ctx} (vision: projected)", str(self.depth)


@register_method("maple")
class MaPLe(PromptMethod):
    config_cls = MaPLeConfig

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        dims = backbone.dims
        self.depth = effective_depth(cfg.depth, min(dims.text_layers, dims.vision_layers))
        self.text_ctx = TextContext(backbone, self.clip, len(classnames), cfg.n_ctx, cfg.ctx_init)
        self.text_deep = deep_prompt_rows(self.depth - 1, cfg.n_ctx, dims.text_width)
        # coupling 0 maps the input context, coupling k the text prompts of block k
        self.couplings = nn.ModuleList(nn.Linear(dims.text_width, dims.vision_width) for _ in range(self.depth))

    def text_prompts(self) -> list[torch.Tensor]:
        """Text prompts per depth: the input context, then the deep prompts of blocks 1..J-1."""
        rows = [self.text_ctx.ctx]
        if self.text_deep is not None:
            rows += list(self.text_deep)
        return rows

    def vision_prompts(self) -> list[torch.Tensor]:
        return [proj(p) for proj, p in zip(self.couplings, self.text_prompts())]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        first, *deep = self.vision_prompts()
        return F.normalize(self.clip.vision(images, first, deep or None), dim=-1)

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        return self.text_ctx.features(classnames, deep_prompts=self.text_prompts()[1:] or None)
