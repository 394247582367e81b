"""The interface every prompt method implements on top of a frozen CLIP.

A method owns only its learned parameters; the CLIP inside (``.clip``) is frozen and stays in eval
mode. Text features that no learned parameter touches are computed once per class list and cached,
never re-encoded every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.clip import Backbone, FrozenCLIP
from kdpipe.errors import KdpipeError
from kdpipe.methods.config import MethodConfig

# bumped when the layout of learned state dicts changes incompatibly
STATE_FORMAT = 1
_CACHE_SIZE = 4


class PromptMethod(nn.Module):
    name: ClassVar[str] = ""  # set by @register_method
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # False when class features do not depend on anything learned: they are then cached
    learns_text: ClassVar[bool] = True
    # True for the PromptKD student: it scores against class features it is given (the teacher's)
    needs_class_features: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: MethodConfig, dataset: str | None = None):
        super().__init__()
        if not classnames:
            raise KdpipeError(f"{self.name}: no class names given; a method needs at least one class")
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(cfg).__name__}")
        self.backbone = backbone
        self.clip = FrozenCLIP(backbone.model)
        self.classnames = list(classnames)
        self.cfg = cfg
        self.dataset = dataset
        self._text_cache: dict[tuple, torch.Tensor] = {}

    # ---- what subclasses provide -------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, D]``."""
        return F.normalize(self.clip.vision(images), dim=-1)

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        """Unnormalised text features ``[C, D]`` of ``classnames``."""
        raise KdpipeError(f"method {self.name!r} has no text side; pass class_features to score images")

    # ---- shared behaviour -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.clip.model.logit_scale.device

    def class_features(self, classnames: list[str] | None = None) -> torch.Tensor:
        """L2-normalised text features ``[C, D]`` (cached when nothing learned affects them)."""
        names = self.classnames if classnames is None else list(classnames)
        if self.learns_text and torch.is_grad_enabled():
            return F.normalize(self._text_features(names), dim=-1)
        # Without gradients (evaluation, classify) learned text features are cached too, keyed by
        # the version counters of the learned tensors: any optimizer step or load invalidates them.
        versions = tuple(p._version for _, p in self.learned_parameters()) if self.learns_text else ()
        key = (tuple(names), str(self.device), versions)
        if key not in self._text_cache:
            # computed in fp32 outside autocast: this tensor is reused for the whole run
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                feats = F.normalize(self._text_features(names).float(), dim=-1)
            if len(self._text_cache) >= _CACHE_SIZE:
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = feats
        return self._text_cache[key]

    @property
    def conditions_on_image(self) -> bool:
        """Whether class features depend on the image (the method has its own ``logits``, e.g.
        CoCoOp): such a method cannot score through stored features or a fixed class index."""
        return type(self).logits is not PromptMethod.logits

    def logits(
        self,
        images: torch.Tensor,
        classnames: list[str] | None = None,
        class_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``logit_scale * norm(img) @ norm(txt).T`` against class names or given class features."""
        img = self.encode_images(images)
        txt = class_features if class_features is not None else self.class_features(classnames)
        self._check_feature_dim(txt, img.shape[-1])
        return self.clip.logit_scale * img @ txt.to(img.dtype).t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Supervised few-shot loss: cross-entropy over ``self.classnames`` (methods add terms)."""
        logits = self.logits(images)
        ce = F.cross_entropy(logits.float(), labels)
        return ce, {"ce": float(ce.detach()), "acc": batch_accuracy(logits, labels)}

    def _check_feature_dim(self, feats: torch.Tensor, dim: int) -> None:
        if feats.dim() != 2 or feats.shape[-1] != dim:
            raise KdpipeError(
                f"class features have shape {tuple(feats.shape)}, {self.name} on {self.backbone.spec} "
                f"needs [classes, {dim}]; were they computed for another model?"
            )

    # ---- hooks called by the training loop --------------------------------------------------------
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """After each training epoch (``epoch`` counts from 0); PromptSRC aggregates prompts here."""

    def finalize(self) -> None:
        """After the last epoch; PromptSRC swaps in its Gaussian-aggregated prompts here."""

    # ---- learned state ----------------------------------------------------------------------------
    def learned_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("clip.")]

    def num_learned(self) -> int:
        return sum(p.numel() for _, p in self.learned_parameters())

    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        """Learned parameters and the buffers they own (e.g. BatchNorm statistics), nothing frozen."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "method": self.name,
            "backbone": self.backbone.spec,
            "arch": self.backbone.arch,
            "dims": dataclasses.asdict(self.backbone.dims),
            "num_classes": len(self.classnames),
            "classnames": list(self.classnames),
            "dataset": self.dataset,
            "config": self.cfg.to_dict(),
        }

    def load_learned_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Strict load: refuses another method, backbone, class count or parameter layout."""
        mine = self.checkpoint_meta()
        if meta.get("method") != self.name:
            raise KdpipeError(
                f"checkpoint holds a {meta.get('method')!r} method, not {self.name!r}; build a {meta.get('method')} method to load it"
            )
        if meta.get("format") != STATE_FORMAT:
            raise KdpipeError(f"checkpoint format {meta.get('format')} is not {STATE_FORMAT}; re-train with this kdpipe version")
        if meta.get("arch") != mine["arch"] or meta.get("dims") != mine["dims"]:
            raise KdpipeError(
                f"checkpoint was trained on backbone {meta.get('backbone')} ({meta.get('arch')}), "
                f"this {self.name} wraps {self.backbone.spec} ({self.backbone.arch}); load it on the same backbone"
            )
        if meta.get("num_classes") != mine["num_classes"]:
            raise KdpipeError(
                f"checkpoint was trained for {meta.get('num_classes')} classes, this {self.name} has {mine['num_classes']}"
            )
        own = self.state_dict()
        expected = {k for k in own if not k.startswith("clip.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KdpipeError(
                f"checkpoint does not match this {self.name} (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                "were n_ctx/depth/options different when it was trained?"
            )
        for k in sorted(expected):
            if tuple(state[k].shape) != tuple(own[k].shape):
                raise KdpipeError(
                    f"checkpoint tensor {k} has shape {tuple(state[k].shape)}, this {self.name} needs {tuple(own[k].shape)}"
                )
        with torch.no_grad():
            for k in expected:
                own[k].copy_(state[k])
        self._text_cache.clear()

    # ---- training-only state (checkpointed by the loop, not part of the learned result) --------
    def extra_train_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_train_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise KdpipeError(f"{self.name} keeps no extra training state, got {sorted(state)[:3]}")

    def train_state_dict(self) -> dict[str, torch.Tensor]:
        """What the loop checkpoints: learned state plus training-only state under ``extra.``."""
        state = self.learned_state_dict()
        state.update({f"extra.{k}": v.detach().clone() for k, v in self.extra_train_state().items()})
        return state

    def load_train_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        learned = {k: v for k, v in state.items() if not k.startswith("extra.")}
        extra = {k[len("extra.") :]: v for k, v in state.items() if k.startswith("extra.")}
        self.load_learned_state_dict(learned, self.checkpoint_meta())
        self.load_extra_train_state(extra)

    def extra_repr(self) -> str:
        return f"method={self.name}, backbone={self.backbone.spec}, classes={len(self.classnames)}, learned={self.num_learned():,}"


def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.detach().argmax(-1) == labels).float().mean())
