"""A built CLIP with everything needed to feed it (:class:`Backbone`), and what is read off the model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from kdpipe.errors import KdpipeError


@dataclass(frozen=True)
class BackboneDims:
    """What a method needs to size its prompts and projector."""

    embed_dim: int  # joint image/text feature size (512 for ViT-B/16, 768 for ViT-L/14)
    vision_width: int  # token width inside the vision transformer
    vision_layers: int
    text_width: int  # token width inside the text transformer
    text_layers: int
    image_size: int
    context_length: int  # text tokens per prompt
    logit_scale: float  # logit_scale.exp() of the loaded weights


@dataclass
class Backbone:
    """A loaded CLIP with everything needed to feed it."""

    spec: str  # the spec the user gave, normalised (recorded in manifests and bundles)
    arch: str  # open_clip architecture name as built (``-quickgelu`` when the weights need it), or hf-hub:/local-dir:
    model: nn.Module  # open_clip CLIP, fp32, eval mode
    preprocess_train: Callable
    preprocess_test: Callable
    tokenizer: Callable[[list[str]], torch.Tensor]
    dims: BackboneDims
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # what it was built from, in open_clip_config.json's layout ({"model_cfg", "preprocess_cfg"}):
    # saved with the weights, so a copy never needs the spec it came from
    config: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "arch": self.arch, "activation": self.activation, **asdict(self.dims)}

    @property
    def activation(self) -> str:
        """``QuickGELU`` or ``GELU``, read from the built residual blocks."""
        return built_activation(self.model)


def built_activation(model: nn.Module) -> str:
    from open_clip.transformer import QuickGELU

    acts = {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    return "QuickGELU" if acts == {"QuickGELU"} else ("GELU" if acts == {"GELU"} else "+".join(sorted(acts)) or "?")


def read_dims(model: nn.Module) -> BackboneDims:
    if not hasattr(model, "visual") or not hasattr(model.visual, "transformer"):
        raise KdpipeError("kdpipe needs a ViT CLIP with a transformer vision tower (ResNet CLIPs are not supported)")
    if not hasattr(model, "transformer") or not hasattr(model, "token_embedding"):
        raise KdpipeError("kdpipe needs a CLIP with the built-in text transformer (custom HF text towers are not supported)")
    visual = model.visual
    image_size = visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return BackboneDims(
        embed_dim=int(model.text_projection.shape[1]) if model.text_projection is not None else model.transformer.width,
        vision_width=int(visual.transformer.width),
        vision_layers=len(visual.transformer.resblocks),
        text_width=int(model.transformer.width),
        text_layers=len(model.transformer.resblocks),
        image_size=int(image_size),
        context_length=int(model.context_length),
        logit_scale=float(model.logit_scale.detach().exp()),
    )


def assemble(spec: str, arch: str, model: nn.Module, transforms: tuple[Callable, Callable], tokenizer: Callable,
              model_cfg: dict[str, Any] | None) -> Backbone:
    """The :class:`Backbone` of a built model: frozen, eval mode, with the config it was built from."""
    import open_clip

    model.eval().requires_grad_(False)
    config = open_clip_config(model, model_cfg)
    pp = config["preprocess_cfg"] if config else {}
    return Backbone(
        spec=spec,
        arch=arch,
        model=model,
        preprocess_train=transforms[0],
        preprocess_test=transforms[1],
        tokenizer=tokenizer,
        dims=read_dims(model),
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        config=config,
    )


def open_clip_config(model: nn.Module, model_cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"model_cfg", "preprocess_cfg"}`` (open_clip_config.json's layout) of a built model, as plain JSON."""
    if model_cfg is None:
        return None
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    return json.loads(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}))
