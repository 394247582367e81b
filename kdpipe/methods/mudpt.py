"""MuDPT: deep text and vision prompts fused both ways by a small injection model.

At every depth the prompts of each tower receive an update computed from the other tower's prompts
(LN -> one light transformer block over that depth's prompt tokens -> LN -> Linear to the other
width), both computed from the un-fused prompts. One injection model per direction is shared by
all depths, which keeps it small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.config import bounded
from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import PromptStack, TextContext, deep_prompt_rows, effective_depth
from kdpipe.methods.registry import register_method


@dataclass
class MuDPTConfig(MethodConfig):
    description = "text and vision deep prompts fused both ways by a light transformer injection model"
    reference = "YzM1a0/MuDPT configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth9.yaml (scripts/mudpt/train_base2new.sh)"
    departs = (
        "n_ctx 4 as that file states; the official run used train.py's default 2, since the file sets it "
        "under TRAINER.MAPLE, which the MuDPT trainer does not read"
    )

    n_ctx: int = bounded(4, ge=1)  # prompt tokens per depth on each tower
    depth: int = bounded(9, ge=1)  # capped at the shallower tower
    ctx_init: str = "a photo of a"
    fusion_mlp_ratio: float = bounded(1.0, gt=0)  # hidden width of the injection block's MLP / its width ("light")
    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.0025

    def prompt_shape(self) -> tuple[str, str]:
        return f"{self.n_ctx}+{self.n_ctx}", str(self.depth)


def _heads(width: int) -> int:
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads


class Injection(nn.Module):
    """Prompts of one tower -> an additive update for the other tower's prompts."""

    def __init__(self, src_width: int, dst_width: int, mlp_ratio: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(src_width)
        self.block = nn.TransformerEncoderLayer(
            src_width,
            _heads(src_width),
            dim_feedforward=max(1, int(src_width * mlp_ratio)),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.norm_out = nn.LayerNorm(src_width)
        self.proj = nn.Linear(src_width, dst_width)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        # [depth, n, W]: attention mixes the tokens of one depth, depths are independent
        return self.proj(self.norm_out(self.block(self.norm_in(prompts))))


@register_method("mudpt")
class MuDPT(PromptMethod):
    config_cls = MuDPTConfig

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        dims = backbone.dims
        self.depth = effective_depth(cfg.depth, min(dims.text_layers, dims.vision_layers))
        self.text_ctx = TextContext(backbone, self.clip, len(classnames), cfg.n_ctx, cfg.ctx_init)
        self.text_deep = deep_prompt_rows(self.depth - 1, cfg.n_ctx, dims.text_width)
        self.vision_prompts = PromptStack(self.depth, cfg.n_ctx, dims.vision_width)
        self.text_to_vision = Injection(dims.text_width, dims.vision_width, cfg.fusion_mlp_ratio)
        self.vision_to_text = Injection(dims.vision_width, dims.text_width, cfg.fusion_mlp_ratio)

    def fused_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(text ``[J, n, Wt]``, vision ``[J, n, Wv]``) after the two-way injection."""
        text = self.text_ctx.ctx.unsqueeze(0)
        if self.text_deep is not None:
            text = torch.cat([text, self.text_deep])
        vision = self.vision_prompts.prompts
        return text + self.vision_to_text(vision), vision + self.text_to_vision(text)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        _, vision = self.fused_prompts()
        return F.normalize(self.clip.vision(images, vision[0], list(vision[1:]) or None), dim=-1)

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        text, _ = self.fused_prompts()
        return self.text_ctx.features(classnames, ctx=text[0], deep_prompts=list(text[1:]) or None)
