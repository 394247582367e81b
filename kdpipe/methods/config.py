"""The config every method shares: optimiser and schedule, plus ``resolve`` (defaults -> dataset -> user)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar

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
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise KdpipeError(
                f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(known)}"
            )
        cfg = cls(**{k: _coerce(cls, known[k], v) for k, v in values.items()})
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


def _coerce(cls: type, field: dataclasses.Field, value: Any) -> Any:
    """Accept strings from the command line for scalar fields ("4", "0.002", "true")."""
    default = field.default
    if default is dataclasses.MISSING or default is None or not isinstance(value, str):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise KdpipeError(
            f"{cls.__name__}.{field.name} expects a {type(default).__name__}, got {value!r}"
        ) from None
    return value
