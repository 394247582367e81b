"""The config every method shares: optimiser and schedule, plus ``resolve`` (defaults -> dataset -> user)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from kdpipe.config import bounded, check_ranges, coerce, field_types
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

    # ranges as for the pipeline's settings (kdpipe.config.bounded); a subclass that only changes a
    # default keeps them, and they are checked for ``teacher.<method>.key`` when it is parsed
    epochs: int = bounded(10, ge=1)
    batch_size: int = bounded(4, ge=1)
    lr: float = bounded(0.002, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    warmup_epochs: int = bounded(1, ge=0)  # at constant warmup_lr, before the cosine schedule
    warmup_lr: float = bounded(1e-5, ge=0)

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
        typed = {k: coerce(v, known[k], f"{cls.__name__}.{k}") for k, v in values.items()}
        cfg = cls(**typed)
        cfg.validate()  # the declared ranges of every field, overrides included
        return cfg

    def validate(self) -> None:
        """Refuse settings no run can use: the declared ranges (lr finite and > 0, momentum in
        [0, 1), ...); subclasses add their own checks."""
        check_ranges(self, f"{type(self).__name__}.")

    def prompt_shape(self) -> tuple[str, str]:
        """(context tokens, prompt depth) as the reference table shows them; methods with prompts override."""
        return "-", "-"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
