"""Zero-shot CLIP: the dataset's hand template (or an ensemble of templates), nothing learned."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdpipe.errors import KdpipeError
from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.prompts import hand_prompt_features
from kdpipe.methods.registry import register_method
from kdpipe.methods.templates import IMAGENET_TEMPLATES, template_for


@dataclass
class ZeroShotConfig(MethodConfig):
    description = "zero-shot CLIP with the dataset's hand template (or a template ensemble); nothing learned"
    reference = "CLIP's hand templates per dataset, as CoOp's code lists them"

    template: str = ""  # "" = the dataset's reference template ("a photo of a {}." for custom data)
    # average normalised features over templates: "" = off, "imagenet" = CLIP's 60 ImageNet templates,
    # or several templates separated by "|"
    ensemble: str = ""
    epochs: int = 0  # nothing to train

    def validate(self) -> None:
        if self.template and "{}" not in self.template:
            raise KdpipeError(f"template {self.template!r} needs a {{}} where the class name goes")

    def templates(self, dataset: str | None) -> list[str]:
        if self.ensemble == "imagenet":
            return list(IMAGENET_TEMPLATES)
        if self.ensemble:
            found = [t.strip() for t in self.ensemble.split("|") if t.strip()]
            bad = [t for t in found if "{}" not in t]
            if bad:
                raise KdpipeError(f"ensemble template {bad[0]!r} needs a {{}} where the class name goes")
            return found
        return [self.template or template_for(dataset)]


@register_method("zeroshot")
class ZeroShot(PromptMethod):
    config_cls = ZeroShotConfig
    learns_text = False

    def _text_features(self, classnames: list[str]) -> torch.Tensor:
        return hand_prompt_features(self.backbone, self.clip, classnames, self.cfg.templates(self.dataset))
