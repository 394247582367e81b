"""PromptSRC: IVLP prompts regularised towards the frozen CLIP, plus Gaussian prompt aggregation.

Loss, as the reference code computes it (not as the paper writes it):
  CE + 25 * mean|norm(text) - text_target| + 10 * mean|norm(img) - norm(frozen img)|
     + KL(frozen zero-shot || prompted) summed / (B * C)
``text_target`` is the frozen CLIP's raw text features averaged over the 60 ImageNet templates and
normalised once; the zero-shot logits score the frozen image features against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.config import bounded
from kdpipe.methods.base import batch_accuracy
from kdpipe.methods.ivlp import IVLP, IVLPConfig
from kdpipe.methods.prompts import hand_prompt_features
from kdpipe.methods.registry import register_method
from kdpipe.methods.templates import IMAGENET_TEMPLATES
from kdpipe.train.gpa import GaussianAggregate, gaussian_weights


@dataclass
class PromptSRCConfig(IVLPConfig):
    description = "IVLP prompts + self-regularisation to frozen CLIP (text, image, KL) + Gaussian prompt aggregation"
    reference = "muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml (scripts/promptsrc/base2new_train.sh)"

    # PromptSRC's own prompts, not IVLP's 2+2 / depth 12 (its config starts from PromptSRC's IVLP variant)
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    epochs: int = 20
    batch_size: int = 4
    lr: float = 0.0025
    text_loss_weight: float = bounded(25.0, ge=0)
    image_loss_weight: float = bounded(10.0, ge=0)
    kl_weight: float = bounded(1.0, ge=0)
    gpa_mean: float = bounded(15.0, gt=0)  # epoch (1-based) of the Gaussian's peak, for gpa_ref_epochs epochs
    gpa_std: float = bounded(1.0, gt=0)  # in epochs
    gpa_ref_epochs: int = bounded(20, ge=1)  # with another epoch count the peak moves proportionally (mean * epochs / 20)
    # the reference teacher on ViT-L/14 uses batch_size 8, lr 0.005 (set by the teacher recipe)


@register_method("promptsrc")
class PromptSRC(IVLP):
    config_cls = PromptSRCConfig

    def __init__(self, backbone, classnames, cfg, dataset=None):
        super().__init__(backbone, classnames, cfg, dataset)
        self._targets: dict[tuple, torch.Tensor] = {}
        self._gpa: GaussianAggregate | None = None

    def text_target(self, classnames: list[str] | None = None) -> torch.Tensor:
        """Normalised frozen text target ``[C, D]`` (60-template mean of raw features), computed once."""
        names = self.classnames if classnames is None else list(classnames)
        key = (tuple(names), str(self.device))
        if key not in self._targets:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                raw = hand_prompt_features(self.backbone, self.clip, names, IMAGENET_TEMPLATES, normalize_each=False)
            self._targets = {key: F.normalize(raw.float(), dim=-1)}
        return self._targets[key]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        img = self.encode_images(images)
        txt = self.class_features()
        scale = self.clip.logit_scale
        logits = (scale * img @ txt.to(img.dtype).t()).float()
        with torch.no_grad():
            target = self.text_target()
            frozen_img = F.normalize(self.clip.vision(images), dim=-1).float()
            zs_logits = scale * frozen_img @ target.t()
        ce = F.cross_entropy(logits, labels)
        l_text = F.l1_loss(txt.float(), target) * cfg.text_loss_weight
        l_img = F.l1_loss(img.float(), frozen_img) * cfg.image_loss_weight
        kl = (
            F.kl_div(F.log_softmax(logits, -1), F.log_softmax(zs_logits, -1), reduction="sum", log_target=True)
            / logits.numel()
            * cfg.kl_weight
        )
        loss = ce + l_text + l_img + kl
        logs = {"ce": float(ce.detach()), "scl_text": float(l_text.detach()), "scl_image": float(l_img.detach())}
        logs.update({"scl_kl": float(kl.detach()), "acc": batch_accuracy(logits, labels)})
        return loss, logs

    # ---- Gaussian prompt aggregation over epochs ----------------------------------------------
    def _aggregate(self, epochs: int) -> GaussianAggregate:
        if self._gpa is None or len(self._gpa.weights) != epochs:
            cfg = self.cfg
            self._gpa = GaussianAggregate(gaussian_weights(epochs, cfg.gpa_mean, cfg.gpa_std, cfg.gpa_ref_epochs))
        return self._gpa

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        self._aggregate(epochs).add(epoch, self.learned_state_dict())

    def finalize(self) -> None:
        if self._gpa is None or not self._gpa.sum:
            return
        own = self.state_dict()
        with torch.no_grad():
            for k, v in self._gpa.result().items():
                own[k].copy_(v)
        self._text_cache.clear()

    def extra_train_state(self) -> dict[str, torch.Tensor]:
        if self._gpa is None:
            return {}
        state = {f"gpa.{k}": v for k, v in self._gpa.state_dict().items()}
        state["gpa_epochs"] = torch.tensor(len(self._gpa.weights))
        return state

    def load_extra_train_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self._gpa = None
            return
        agg = self._aggregate(int(state["gpa_epochs"]))
        agg.load_state_dict({k[len("gpa.") :]: v for k, v in state.items() if k.startswith("gpa.")})
