"""CoCoOp: CoOp's context plus a Meta-Net bias computed from each image's frozen CLIP feature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.methods.base import PromptMethod
from kdpipe.config import bounded
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import TextContext
from kdpipe.methods.registry import register_method

# text prompts encoded per forward pass: bounds memory when batch x classes is large at test time
_PROMPTS_PER_PASS = 2048


@dataclass
class CoCoOpConfig(MethodConfig):
    description = "CoOp context + Meta-Net bias from the frozen image feature (image-conditioned prompts)"
    reference = "KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (scripts/cocoop/base2new_train.sh)"

    n_ctx: int = bounded(4, ge=1)
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02) init
    epochs: int = 10
    batch_size: int = 1
    lr: float = 0.002

    def prompt_shape(self) -> tuple[str, str]:
        return str(self.n_ctx), "1"


@register_method("cocoop")
class CoCoOp(PromptMethod):
    """``class_features()`` (no image) uses the context without the Meta-Net bias: the image-independent
    part of the prompt, which is what a stored class index can hold. ``logits`` without given class
    features computes the real image-conditioned prompts, one text pass per image and class."""

    config_cls = CoCoOpConfig

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        d, w = backbone.dims.embed_dim, backbone.dims.text_width
        hidden = max(1, d // 16)
        self.text_ctx = TextContext(backbone, self.clip, len(classnames), cfg.n_ctx, cfg.ctx_init)
        self.meta_net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, w))

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        return self.text_ctx.features(classnames)

    def logits(self, images, classnames=None, class_features=None):
        if class_features is not None:
            return super().logits(images, classnames, class_features)
        names = self.classnames if classnames is None else list(classnames)
        img = self.encode_images(images)
        bias = self.meta_net(img)  # [B, W]; the frozen image feature, as in the reference
        ctx = self.text_ctx.ctx.unsqueeze(0) + bias.unsqueeze(1)  # [B, n_ctx, W]
        per_pass = max(1, _PROMPTS_PER_PASS // len(names))
        rows = []
        for start in range(0, len(images), per_pass):
            embs, toks = [], []
            for c in ctx[start : start + per_pass]:
                e, t = self.text_ctx.embeddings(names, c)
                embs.append(e)
                toks.append(t)
            feats = self.clip.text(torch.cat(embs), torch.cat(toks))
            rows.append(F.normalize(feats, dim=-1).view(-1, len(names), feats.shape[-1]))
        txt = torch.cat(rows)  # [B, C, D]
        return self.clip.logit_scale * torch.einsum("bd,bcd->bc", img, txt.to(img.dtype))
