"""Prompt building blocks shared by the methods: learned text context and deep prompt stacks.

Text: the prompt "[SOS] ctx_1..ctx_n (frozen words) class . [EOS]" is tokenised once per class
list; the learned context replaces token positions 1..n of its word embeddings, so it gets the
positional embedding like the words it stands for. When the init phrase has more tokens than
n_ctx ("a photo of a" with n_ctx 2) the learned tokens replace the first words and the rest stay
as frozen words; with fewer tokens, the extra context tokens start random.
"""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.clip import Backbone, FrozenCLIP
from kdpipe.errors import KdpipeError
from kdpipe.methods.templates import fill

INIT_STD = 0.02
CLASS_POSITIONS = ("end", "middle", "front")
TEXT_CHUNK = 1024  # prompts per text-encoder pass when no gradients are kept
_CACHE_SIZE = 4


def normal_init(*shape: int, std: float = INIT_STD) -> torch.Tensor:
    return torch.randn(*shape) * std


def effective_depth(depth: int, layers: int) -> int:
    """Prompt depth J counts the input plus blocks 1..J-1, so a tower of L blocks takes at most L."""
    if depth < 1:
        raise KdpipeError(f"prompt depth must be at least 1 (input only), got {depth}")
    return min(depth, layers)


def token_count(backbone: Backbone, text: str) -> int:
    """Tokens of ``text`` without SOS/EOS (pad id is 0 for CLIP tokenizers)."""
    return int((backbone.tokenizer([text])[0] != 0).sum()) - 2


def context_init(backbone: Backbone, clip: FrozenCLIP, n_ctx: int, init_words: str | None) -> tuple[torch.Tensor, str]:
    """Initial context vectors ``[n_ctx, W]`` and the text prefix whose first n_ctx tokens they replace."""
    width = backbone.dims.text_width
    words = (init_words or "").replace("_", " ").strip()
    if not words:
        return normal_init(n_ctx, width), " ".join(["X"] * n_ctx)
    m = token_count(backbone, words)
    with torch.no_grad():
        emb = clip.text.embed(backbone.tokenizer([words]).to(clip.model.logit_scale.device))[0].float().cpu()
    take = min(n_ctx, m)
    vectors = emb[1 : 1 + take].clone()
    if n_ctx > m:
        vectors = torch.cat([vectors, normal_init(n_ctx - m, width)])
        words = words + " X" * (n_ctx - m)
    return vectors, words


class TextContext(nn.Module):
    """Learned text context (shared or one per class) placed before, around or after class names."""

    def __init__(
        self,
        backbone: Backbone,
        clip: FrozenCLIP,
        n_classes: int,
        n_ctx: int,
        init_words: str | None,
        class_specific: bool = False,
        class_position: str = "end",
    ):
        super().__init__()
        if n_ctx < 1:
            raise KdpipeError(f"n_ctx must be at least 1 for a learned text context, got {n_ctx}")
        if class_position not in CLASS_POSITIONS:
            raise KdpipeError(f"class_position must be one of {', '.join(CLASS_POSITIONS)}, got {class_position!r}")
        vectors, self.prefix = context_init(backbone, clip, n_ctx, init_words)
        if class_position != "end" and token_count(backbone, self.prefix) != n_ctx:
            raise KdpipeError(
                f"class_position {class_position!r} needs n_ctx equal to the init phrase's tokens "
                f"({token_count(backbone, self.prefix)} for {init_words!r}); use n_ctx to match or class_position 'end'"
            )
        if class_specific:
            if init_words:
                vectors = vectors.unsqueeze(0).repeat(n_classes, 1, 1)
            else:
                vectors = normal_init(n_classes, n_ctx, backbone.dims.text_width)
        self.ctx = nn.Parameter(vectors)
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.class_position = class_position
        self.__dict__["_backbone"] = backbone
        self.__dict__["_clip"] = clip
        self._frozen: dict[tuple, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}

    def frozen(self, classnames: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Tokens ``[C, L]``, their word embeddings ``[C, L, W]`` and class-name lengths (cached)."""
        device = self.ctx.device
        key = (tuple(classnames), str(device))
        if key not in self._frozen:
            bb = self._backbone
            texts = [fill(self.prefix + " {}.", c) for c in classnames]
            tokens = bb.tokenizer(texts).to(device)
            with torch.no_grad():
                emb = self._clip.text.embed(tokens)
            lens = [token_count(bb, c.replace("_", " ")) for c in classnames] if self.class_position != "end" else []
            if len(self._frozen) >= _CACHE_SIZE:
                self._frozen.pop(next(iter(self._frozen)))
            self._frozen[key] = (tokens, emb, lens)
        return self._frozen[key]

    def embeddings(self, classnames: list[str], ctx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings ``[C, L, W]`` with ``ctx`` (default: the learned one) in place, and tokens."""
        tokens, emb, lens = self.frozen(classnames)
        ctx = self.ctx if ctx is None else ctx
        n_cls = len(classnames)
        if ctx.dim() == 3:
            if ctx.shape[0] != n_cls:
                raise KdpipeError(
                    f"class-specific context was learned for {ctx.shape[0]} classes and cannot score {n_cls} other class names"
                )
        else:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        ctx = ctx.to(emb.dtype)
        n = self.n_ctx
        prefix, suffix = emb[:, :1], emb[:, 1 + n :]
        if self.class_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1), tokens
        rows = []
        half = n // 2
        for i, k in enumerate(lens):
            name, rest = suffix[i : i + 1, :k], suffix[i : i + 1, k:]
            c = ctx[i : i + 1]
            if self.class_position == "front":
                rows.append(torch.cat([prefix[i : i + 1], name, c, rest], dim=1))
            else:
                rows.append(torch.cat([prefix[i : i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
        return torch.cat(rows), tokens

    def features(
        self,
        classnames: list[str],
        ctx: torch.Tensor | None = None,
        deep_prompts: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Unnormalised text features ``[C, D]``."""
        ctx = self.ctx if ctx is None else ctx
        if torch.is_grad_enabled() or len(classnames) <= TEXT_CHUNK or ctx.dim() == 3:
            emb, tokens = self.embeddings(classnames, ctx)
            return self._clip.text(emb, tokens, deep_prompts=deep_prompts, ctx_start=1)
        # a large label set at inference: bounded memory, same result
        chunks = range(0, len(classnames), TEXT_CHUNK)
        return torch.cat([self.features(classnames[i : i + TEXT_CHUNK], ctx, deep_prompts) for i in chunks])


class PromptStack(nn.Module):
    """``depth`` rows of ``n`` prompt tokens: row 0 enters at the input, row k replaces block k's."""

    def __init__(self, depth: int, n_tokens: int, width: int):
        super().__init__()
        self.prompts = nn.Parameter(normal_init(depth, n_tokens, width))

    def forward(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.prompts[0], list(self.prompts[1:])


def hand_prompt_features(
    backbone: Backbone,
    clip: FrozenCLIP,
    classnames: list[str],
    templates: list[str] | tuple[str, ...],
    normalize_each: bool = True,
) -> torch.Tensor:
    """Frozen CLIP text features ``[C, D]`` of hand templates: one template, or the mean over several.

    CLIP's zero-shot ensembles average normalised features (``normalize_each``); PromptSRC's text
    target averages the raw features and is normalised once by the caller.
    """
    device = clip.model.logit_scale.device
    feats = []
    for template in templates:
        texts = [fill(template, c) for c in classnames]
        f = torch.cat([clip.text.encode(backbone.tokenizer(texts[i : i + TEXT_CHUNK]).to(device)) for i in range(0, len(texts), TEXT_CHUNK)])
        feats.append(nn.functional.normalize(f, dim=-1) if normalize_each and len(templates) > 1 else f)
    return feats[0] if len(feats) == 1 else torch.stack(feats).mean(0)


def deep_prompt_rows(rows: int, n_tokens: int, width: int) -> nn.Parameter | None:
    """Deep prompts for blocks 1..rows (their input counterpart lives elsewhere), or None for none."""
    return nn.Parameter(normal_init(rows, n_tokens, width)) if rows > 0 and n_tokens > 0 else None
