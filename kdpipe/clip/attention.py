"""An inference twin of ``nn.MultiheadAttention`` over ``F.scaled_dot_product_attention``.

open_clip's blocks call ``self.attn(q, k, v, need_weights=False, attn_mask=mask)[0]``; swapping
``block.attn`` for :class:`SdpaAttention` keeps open_clip's own block (``ln_1``, ``mlp``, layer
scale) and changes only how attention is computed. Two things it buys at inference:

  - ``scaled_dot_product_attention`` picks a fused kernel (flash / memory-efficient on CUDA, a
    flash-style CPU kernel) in any dtype, where ``nn.MultiheadAttention``'s fast path is fp32/fp16
    only and its slow path materialises the ``[B, H, L, L]`` weights;
  - the input projection is an ``nn.Linear`` (``in_proj``), not the raw ``in_proj_weight``
    parameter, so dynamic int8 quantisation of the Linear layers covers it too (a third of a
    ViT block's attention FLOPs). ``out_proj`` is a plain ``nn.Linear`` for the same reason
    (``nn.MultiheadAttention``'s is a ``NonDynamicallyQuantizableLinear``).

In fp32 it matches ``nn.MultiheadAttention`` to float rounding (~1e-6; tested). Self-attention
only, no dropout, no key padding mask: what open_clip's image and text towers use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SdpaAttention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SdpaAttention copies plain self-attention only (same q/k/v dims, no bias_k, no zero attn)")
        w = mha.embed_dim
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        bias = mha.in_proj_bias is not None
        dtype, device = mha.in_proj_weight.dtype, mha.in_proj_weight.device
        self.in_proj = nn.Linear(w, 3 * w, bias=bias, dtype=dtype, device=device)
        self.out_proj = nn.Linear(w, w, bias=mha.out_proj.bias is not None, dtype=dtype, device=device)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            if self.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("SdpaAttention is self-attention only: key and value must be the query")
        x = query if self.batch_first else query.transpose(0, 1)  # [B, L, W]
        b, length, w = x.shape
        qkv = self.in_proj(x).view(b, length, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # True means "masked out" to MHA and "attend" to SDPA
                raise TypeError("SdpaAttention takes additive float attention masks only, as open_clip passes them")
            attn_mask = attn_mask.to(qkv.dtype)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)  # [B, H, L, Dh]
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, w))
        return (out if self.batch_first else out.transpose(0, 1)), None


def use_sdpa(transformer: nn.Module) -> int:
    """Swap every block's ``nn.MultiheadAttention`` of ``transformer`` for :class:`SdpaAttention`,
    in place; returns how many were swapped (blocks of other kinds keep their attention)."""
    swapped = 0
    for block in transformer.resblocks:
        if type(getattr(block, "attn", None)) is nn.MultiheadAttention and not hasattr(block, "ln_1_kv"):
            block.attn = SdpaAttention(block.attn)
            swapped += 1
    return swapped


class Bf16Block(nn.Module):
    """open_clip's block with its matmuls in bfloat16 (attention, MLP: bf16 weights) around a float32
    residual stream and float32 LayerNorms. The stream carries every block's sum: rounding it to
    bf16's 8 bits at each of 2 x depth additions is what moved predictions (demo world, world-b:
    99.22% top-1 agreement with fp32 with a bf16 stream, 99.72% with this one)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        block.attn.to(torch.bfloat16)
        block.mlp.to(torch.bfloat16)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = self.block
        x = x + b.ls_1(b.attention(q_x=b.ln_1(x).to(torch.bfloat16), attn_mask=attn_mask).float())
        return x + b.ls_2(b.mlp(b.ln_2(x).to(torch.bfloat16)).float())


def use_bf16_blocks(transformer: nn.Module) -> None:
    """Every block of ``transformer`` as a :class:`Bf16Block` (attention through SDPA), in place."""
    use_sdpa(transformer)
    transformer.resblocks = nn.ModuleList([Bf16Block(b) for b in transformer.resblocks])
