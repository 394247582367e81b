"""open_clip's vision and text towers run block by block, so prompts can enter at any depth.

Conventions (DESIGN §4):
  - vision prompts are appended AFTER the patch tokens, after the positional embedding (they get
    none) and before ``ln_pre``; deep prompts for block k (k = 1..J-1) replace the previous block's
    prompt tokens, the last ``n`` tokens of the sequence;
  - text context is part of the embedded sequence the caller builds (it stands in for word
    embeddings, so it gets the positional embedding like the words it replaces); deep text prompts
    for block k replace positions ``ctx_start .. ctx_start+n``.
With no prompts both towers perform exactly the same ops as ``encode_image`` / ``encode_text``, so
their outputs are bit-identical (tested with ``torch.equal``).

``deep_prompts`` is a sequence indexed by block: entry ``k-1`` feeds block ``k``; ``None`` entries,
and blocks past the end of the sequence, keep the tokens the previous block produced.
Prompt tensors are ``[n, W]`` (shared by the batch) or ``[B, n, W]`` (per sample, e.g. CoCoOp/MaPLe).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _expand(prompts: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    prompts = prompts.to(dtype)
    return prompts.unsqueeze(0).expand(batch, -1, -1) if prompts.dim() == 2 else prompts


def _plain_block(block: nn.Module) -> bool:
    """open_clip's standard block (self-attention through nn.MultiheadAttention, no cross-attention)."""
    from open_clip.transformer import ResidualAttentionBlock

    return (type(block) is ResidualAttentionBlock and type(block.attn) is nn.MultiheadAttention
            and block.attn.batch_first and not hasattr(block, "ln_1_kv") and block.attn.dropout == 0.0)


def _sequence_first_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """``block(x)`` for sequence-first ``x`` ``[L, B, W]``: the same ops without the transposes
    ``nn.MultiheadAttention(batch_first=True)`` makes around every call."""
    attn = block.attn
    h = block.ln_1(x)
    a = F.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
        attn_mask=attn_mask.to(h.dtype) if attn_mask is not None else None,
    )[0]
    x = x + block.ls_1(a)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None,
    deep_prompts: Sequence[torch.Tensor | None] | None,
    replace: "callable",
) -> torch.Tensor:
    """Run ``transformer.resblocks`` on batch-first ``x``, swapping in deep prompts before blocks 1..J-1."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # nn.MultiheadAttention reads a bool mask as "True = masked out", open_clip's float masks
        # are additive; mixing them up silently corrupts attention, so refuse bool masks outright.
        raise TypeError("prompted towers take additive float attention masks only")
    batch_first = getattr(transformer, "batch_first", True)
    if batch_first and torch.is_grad_enabled() and all(_plain_block(b) for b in transformer.resblocks):
        # Training (gradients flow to the prompts through every block): run sequence-first, as
        # OpenAI's CLIP code and the reference repos do, without the transposes around every
        # batch-first nn.MultiheadAttention call. Inference keeps open_clip's own blocks
        # (bit-identical to encode_image, and nn.MultiheadAttention's fast path).
        run_block, batch_first = _sequence_first_block, False
    else:
        def run_block(block, x, mask):
            return block(x, attn_mask=mask)
    seq = 1 if batch_first else 0
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    for k, block in enumerate(transformer.resblocks):
        if k > 0 and deep_prompts is not None and k - 1 < len(deep_prompts) and deep_prompts[k - 1] is not None:
            x = replace(x, deep_prompts[k - 1], seq)
        x = run_block(block, x, attn_mask)
    return x if batch_first else x.transpose(0, 1)


class PromptedVision(nn.Module):
    """``visual.forward`` with optional prompt tokens after the patch tokens."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class tokens with positional embedding, before ``ln_pre`` (open_clip ``_embeds``)."""
        v = self.visual
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = x.permute(0, 2, 1)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    def forward(
        self,
        images: torch.Tensor,
        prompts: torch.Tensor | None = None,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        v = self.visual
        x = self.tokens(images)
        n_tokens = x.shape[1]
        if prompts is not None:
            x = torch.cat([x, _expand(prompts, x.shape[0], x.dtype)], dim=1)
        x = v.ln_pre(x)

        def replace(x: torch.Tensor, p: torch.Tensor, seq: int = 1) -> torch.Tensor:
            p = _expand(p, x.shape[1 - seq], x.dtype)
            return torch.cat([x.narrow(seq, 0, n_tokens), p if seq == 1 else p.transpose(0, 1)], dim=seq)

        if deep_prompts is not None and prompts is None:
            raise ValueError("deep vision prompts need input prompts to replace")
        x = _run_blocks(v.transformer, x, None, deep_prompts, replace)
        # prompt tokens never reach the pooled feature: drop them before pooling
        pooled, _ = v._pool(x[:, :n_tokens])
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled


def _causal_prefix(clip: nn.Module, tokens: torch.Tensor) -> int:
    """Positions up to the last EOT of ``tokens`` when the text tower is causal and pools at EOT
    (every CLIP-style open_clip model); the full length otherwise."""
    pool = getattr(clip, "text_pool_type", "argmax")
    if getattr(clip, "attn_mask", None) is None or pool not in ("argmax", "eos") or tokens.numel() == 0:
        return tokens.shape[1]
    if pool == "argmax":
        eot = tokens.argmax(dim=-1)
    else:
        eot = (tokens == getattr(clip, "text_eos_id", None)).int().argmax(dim=-1)
    return int(eot.max()) + 1


def _prompts_end(deep_prompts: Sequence[torch.Tensor | None] | None, ctx_start: int) -> int:
    """One past the last position a deep text prompt replaces."""
    sizes = [p.shape[-2] for p in (deep_prompts or ()) if p is not None]
    return ctx_start + max(sizes, default=0)


class PromptedText(nn.Module):
    """``encode_text`` over caller-built token embeddings, with optional deep prompts."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.transformer.get_cast_dtype()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word embeddings ``[N, L, W]`` of token ids, before the positional embedding."""
        return self.clip.token_embedding(tokens).to(self.dtype)

    def forward(
        self,
        embeddings: torch.Tensor,
        tokens: torch.Tensor,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        ctx_start: int = 1,
        trim: bool = True,
    ) -> torch.Tensor:
        """Text features at the EOT token of ``tokens`` (which fixes where EOT sits), projected.

        ``trim`` drops the positions after the last EOT (same features up to float rounding, much
        faster); ``trim=False`` runs all ``context_length`` positions like ``encode_text``."""
        from open_clip.transformer import text_global_pool

        c = self.clip
        mask, pos = c.attn_mask, c.positional_embedding
        length = _causal_prefix(c, tokens)
        if trim and length < tokens.shape[1] and _prompts_end(deep_prompts, ctx_start) <= length:
            # Under a causal mask nothing after EOT reaches the pooled EOT feature; dropping the
            # padding makes every text pass cheaper (77 -> ~15 positions for ViT-B/16 class prompts)
            embeddings, tokens, pos, mask = embeddings[:, :length], tokens[:, :length], pos[:length], mask[:length, :length]
        x = embeddings + pos.to(self.dtype)

        def replace(x: torch.Tensor, p: torch.Tensor, seq: int = 1) -> torch.Tensor:
            p = _expand(p, x.shape[1 - seq], x.dtype)
            end = ctx_start + p.shape[1]
            parts = [x.narrow(seq, 0, ctx_start), p if seq == 1 else p.transpose(0, 1), x.narrow(seq, end, x.shape[seq] - end)]
            return torch.cat(parts, dim=seq)

        x = _run_blocks(c.transformer, x, mask, deep_prompts, replace)
        x = c.ln_final(x)
        x = text_global_pool(x, tokens, c.text_pool_type, eos_token_id=getattr(c, "text_eos_id", None))
        if c.text_projection is not None:
            x = c.text_projection(x) if isinstance(c.text_projection, nn.Linear) else x @ c.text_projection
        return x

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Plain ``encode_text`` (no prompts) through the same path, bit for bit (untrimmed)."""
        return self(self.embed(tokens), tokens, trim=False)


class FrozenCLIP(nn.Module):
    """A CLIP whose weights never train: no gradients, and eval mode whatever ``.train()`` is called.

    Keeping it in eval matters beyond dropout: open_clip's patch dropout is active in train mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        # The towers share ``model``'s modules; kept out of the module tree so the weights are
        # registered (and saved, moved, counted) once, under ``model``.
        self.__dict__["vision"] = PromptedVision(model.visual)
        self.__dict__["text"] = PromptedText(model)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        super().train(mode)
        self.model.eval()
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp()
