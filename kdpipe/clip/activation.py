"""Which activation a CLIP must be built with: the one its weights were trained with.

OpenAI's CLIPs (and several open_clip tags: metaclip, dfn, laion400m ...) were trained with
QuickGELU. open_clip 3 builds ``ViT-B-16`` + ``openai`` with ``nn.GELU`` and only warns; every logit
is then off by 1-3% and PromptKD's gradients by up to 60%. open_clip records ``quick_gelu`` per
pretrained tag, so the architecture is chosen from the tag's own config: ``ViT-B-16`` with a
QuickGELU tag becomes its sibling ``ViT-B-16-quickgelu`` (same weights, other activation).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

from kdpipe.errors import KdpipeError

QUICK_SUFFIX = "-quickgelu"
_MISMATCH = "QuickGELU mismatch"  # the start of open_clip's warning when config and tag disagree


def is_quick_gelu(arch: str) -> bool | None:
    """Whether the registered architecture ``arch`` builds QuickGELU (None: not a registered name)."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    return None if cfg is None else bool(cfg.get("quick_gelu", False))


def activation_name(quick: bool | None) -> str:
    return "?" if quick is None else ("QuickGELU" if quick else "GELU")


def _sibling(arch: str, quick: bool) -> str:
    return arch + QUICK_SUFFIX if quick else arch.removesuffix(QUICK_SUFFIX)


def tag_is_quick_gelu(arch: str, tag: str) -> bool | None:
    """The activation the weights of ``arch:tag`` were trained with (None: unknown tag)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    return bool(cfg.get("quick_gelu", False)) if cfg else None


def arch_for_tag(arch: str, tag: str) -> str:
    """``arch`` or its activation sibling, whichever builds what ``tag``'s weights were trained with.

    A name without the ``-quickgelu`` suffix means "this architecture, the weights' activation";
    a spelling that asks for the other activation explicitly, or that has no sibling, is refused
    with the spelling to use. Unknown tags are returned unchanged for the caller to report.
    """
    want = tag_is_quick_gelu(arch, tag)
    if want is None:
        # the tag may exist for the sibling only, e.g. ViT-B-16-quickgelu:laion2b_s34b_b88k
        for quick in (True, False):
            other = _sibling(arch, quick)
            if other != arch and tag_is_quick_gelu(other, tag) is not None:
                raise KdpipeError(
                    f"{arch}:{tag}: these weights were trained with {activation_name(tag_is_quick_gelu(other, tag))}; "
                    f"use {other}:{tag}"
                )
        return arch
    have = is_quick_gelu(arch)
    if have is None or have == want:
        return arch
    sibling = _sibling(arch, want)
    if not arch.endswith(QUICK_SUFFIX) and sibling != arch and is_quick_gelu(sibling) == want:
        return sibling
    raise KdpipeError(
        f"{arch}:{tag}: {arch} builds {activation_name(have)} but these weights were trained with "
        f"{activation_name(want)}; use an architecture with {activation_name(want)}"
        + (f" ({sibling}:{tag})" if is_quick_gelu(sibling) == want and sibling != arch else "")
    )


def arch_for_openai_file(arch: str, path: str) -> str:
    """The QuickGELU architecture for OpenAI's own TorchScript checkpoint given as ``arch:path``."""
    if is_quick_gelu(arch):
        return arch
    sibling = _sibling(arch, True)
    if is_quick_gelu(sibling):
        return sibling
    raise KdpipeError(
        f"{path} is an OpenAI TorchScript checkpoint (trained with QuickGELU) but {arch} builds GELU "
        f"and has no {sibling} sibling; give an architecture with \"quick_gelu\": true"
    )


@contextlib.contextmanager
def strict_activation(spec: str) -> Iterator[None]:
    """Turn open_clip's QuickGELU mismatch warning into a one-line error instead of a wrong model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_MISMATCH, category=UserWarning)
        try:
            yield
        except UserWarning as w:
            if _MISMATCH not in str(w):
                raise
            raise KdpipeError(
                f"{spec}: open_clip reports a QuickGELU mismatch between the architecture and its weights "
                f"({str(w).strip()}); for OpenAI weights use the {QUICK_SUFFIX} architecture, "
                "e.g. ViT-B-16-quickgelu:openai"
            ) from None
