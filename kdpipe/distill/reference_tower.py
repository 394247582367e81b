"""The prompted vision tower written the way the official PromptKD/PromptSRC code runs it.

Only for ``kdpipe bench distill``: the baseline kdpipe's own tower (:class:`kdpipe.clip.PromptedVision`)
is measured against. The official repos run OpenAI's CLIP code: sequence-first (``[L, B, W]``)
tensors through every block, ``multi_head_attention_forward`` on the packed in-projection, and
deep prompts swapped in by slicing off the last ``n`` tokens and concatenating the next block's.
It runs on the same open_clip weights as kdpipe's tower, so the two give the same features (a test
holds them to that) and any speed difference is the code path alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    return F.multi_head_attention_forward(
        x, x, x, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
    )[0]


def reference_vision(
    visual: nn.Module,
    images: torch.Tensor,
    prompts: torch.Tensor,
    deep_prompts: Sequence[torch.Tensor | None] = (),
) -> torch.Tensor:
    """Pooled, projected image features of an open_clip ``VisionTransformer`` with deep vision prompts
    (``prompts`` ``[n, W]`` after the patch tokens; ``deep_prompts[k-1]`` replaces them before block k)."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    n = prompts.shape[0]
    x = torch.cat([x, prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # sequence first, as OpenAI's CLIP code runs
    for k, block in enumerate(visual.transformer.resblocks):
        if 1 <= k <= len(deep_prompts) and deep_prompts[k - 1] is not None:
            p = deep_prompts[k - 1].to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
            x = torch.cat([x[:-n], p], dim=0)
        x = x + _attention(block, block.ln_1(x))
        x = x + block.mlp(block.ln_2(x))
    x = visual.ln_post(x[0])  # the class token
    return x @ visual.proj if visual.proj is not None else x
