"""``kdpipe bench text``: prompted text passes trimmed at the last EOT vs the full context length.

Every prompt method runs the text tower over "X X X X {class}." prompts: CoOp, MaPLe and PromptSRC
once per training step (with gradients), CoCoOp once per image. CLIP pads them to 77 positions;
under the causal mask the positions after EOT cannot reach the pooled feature, so
:class:`~kdpipe.clip.towers.PromptedText` drops them. This measures both passes on the same
prompts in one run, forward alone and forward + backward, and checks that the features agree.
"""

from __future__ import annotations

from typing import Any

import torch

from kdpipe.clip.backbones import Backbone
from kdpipe.clip.towers import FrozenCLIP
from kdpipe.timing import per_call_ms

N_CTX = 4


def _prompt_inputs(backbone: Backbone, clip: FrozenCLIP, classnames: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = backbone.tokenizer([" ".join(["X"] * N_CTX) + f" {c}." for c in classnames]).to(clip.logit_scale.device)
    with torch.no_grad():
        return clip.text.embed(tokens), tokens


def bench_text_trim(backbone: Backbone, classnames: list[str], repeats: int = 5) -> dict[str, Any]:
    """Times (ms per pass over ``classnames``) of the trimmed and full-length prompted text pass."""
    clip = FrozenCLIP(backbone.model)
    device = clip.logit_scale.device
    embeddings, tokens = _prompt_inputs(backbone, clip, classnames)
    context = torch.nn.Parameter(torch.randn(N_CTX, backbone.dims.text_width, device=device) * 0.02)

    def prompts() -> torch.Tensor:
        ctx = context.to(embeddings.dtype).unsqueeze(0).expand(len(classnames), -1, -1)
        return torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + N_CTX :]], dim=1)

    def forward(trim: bool) -> torch.Tensor:
        with torch.no_grad():
            return clip.text(prompts(), tokens, trim=trim)

    def train_step(trim: bool) -> None:
        clip.text(prompts(), tokens, trim=trim).float().square().sum().backward()
        context.grad = None

    full, trimmed = forward(False), forward(True)
    out: dict[str, Any] = {
        "prompts": len(classnames),
        "context_length": int(tokens.shape[1]),
        "trimmed_length": int(tokens.argmax(dim=-1).max()) + 1,
        "max_abs_diff": float((full.float() - trimmed.float()).abs().max()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    for name, fn in (("forward", forward), ("train_step", train_step)):
        full_ms = per_call_ms(lambda: fn(False), device, repeats)
        trim_ms = per_call_ms(lambda: fn(True), device, repeats)
        out[name] = {"full_ms": full_ms, "trimmed_ms": trim_ms, "speedup": full_ms / trim_ms}
    return out
