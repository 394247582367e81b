"""The config every method shares: optimiser and schedule, plus ``resolve`` (defaults -> dataset -> user)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from kdpipe.config import coerce, field_types
from kdpipe.errors import KdpipeError


@dataclass
class MethodConfig:
    """Fields shared by all methods. Subclasses set the reference defaults of their paper/code."""

    description: ClassVar[str] = ""
    # where the defaults come from: the official base-to-novel config of the method's own code
    reference: ClassVar[str] = ""
    departs: ClassVar[str] = ""  # where and why kdpipe's defaults differ from ``reference`` ("" = they don't)
    # per-dataset reference defaults applied before user overrides, e.g. CoOp's 50 epochs on ImageNet
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # at constant warmup_lr, before the cosine schedule
    warmup_lr: float = 1e-5

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def resolve(cls, dataset: str | None = None, overrides: dict[str, Any] | None = None) -> "MethodConfig":
        values: dict[str, Any] = {}
        if dataset is not None:
            values.update(cls.dataset_defaults.get(dataset.lower(), {}))
        values.update(overrides or {})
        known = field_types(cls)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise KdpipeError(
                f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(known)}"
            )
        # the same checks as the pipeline's config: strings from a command line are parsed
        cfg = cls(**{k: coerce(v, known[k], f"{cls.__name__}.{k}") for k, v in values.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse settings no run can use; subclasses add their own checks."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise KdpipeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise KdpipeError(f"lr must be positive, got {self.lr}")
        if self.warmup_epochs < 0:
            raise KdpipeError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def prompt_shape(self) -> tuple[str, str]:
        """(context tokens, prompt depth) as the reference table shows them; methods with prompts override."""
        return "-", "-"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
