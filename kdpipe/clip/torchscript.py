"""OpenAI's own CLIP checkpoints (``ViT-B-16.pt`` ...) are TorchScript archives, not state dicts.

``torch.load(..., weights_only=True)`` refuses them, and the pickle route would run whatever the
file holds. ``torch.jit.load`` reads TorchScript's own format (what open_clip's
``load_openai_model`` does) without unpickling Python objects; only its state dict is kept.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from kdpipe.errors import KdpipeError

# entries OpenAI's archives (and traced open_clip models) carry beside the weights
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip with TorchScript's ``code/`` and ``constants.pkl`` entries (plain state dicts have neither)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_torchscript_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the archive's weights into ``model`` (strict: every weight present, nothing left over)."""
    try:
        archive = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as e:
        raise KdpipeError(f"could not read TorchScript checkpoint {path}: {str(e).strip().splitlines()[0]}") from e
    state = {k: v for k, v in archive.state_dict().items() if k not in _NOT_WEIGHTS}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        first = (missing and f"missing {missing[0]}") or (extra and f"unexpected {extra[0]}") or f"shape of {wrong[0]}"
        raise KdpipeError(
            f"{path} does not fit this architecture ({len(missing)} missing, {len(extra)} unexpected, "
            f"{len(wrong)} mis-shaped weights; {first}): give the architecture it was saved from"
        )
    model.load_state_dict(state, strict=True)  # copy_ casts OpenAI's fp16 weights to the model's fp32
