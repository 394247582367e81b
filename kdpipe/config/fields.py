"""What a setting's dataclass field declares besides its type and range: whether it changes what a
stage makes (:func:`runtime_setting`: no) and whether it names a backbone (:func:`model_spec`)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import TYPE_CHECKING, Any

from kdpipe.config.ranges import bounds_metadata

if TYPE_CHECKING:
    from kdpipe.config.resolved import Config

_FINGERPRINT = "kdpipe_fingerprint"
_MODEL_SPEC = "kdpipe_model_spec"
NOT_FINGERPRINTED = object()  # what Config.fingerprint_value returns for a runtime setting


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> declared type of a dataclass (annotations resolved), in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (its factory called), ``dataclasses.MISSING`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def runtime_setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A dataclass field for a setting that changes how a stage runs but not what it produces
    (DataLoader workers, checkpoint interval): it is left out of fingerprints, so changing it
    never makes a finished stage stale. Use it in place of a plain default; ``bounds`` as for
    :func:`bounded` (``runtime_setting(4, ge=0)``)."""
    metadata: dict[str, Any] = {_FINGERPRINT: False}
    if bounds:
        metadata.update(bounds_metadata(**bounds))
    return field(default=default, default_factory=default_factory, metadata=metadata)


def is_runtime_setting(cls: type, name: str) -> bool:
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    return name in fields and fields[name].metadata.get(_FINGERPRINT) is False


def model_spec(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field holding a backbone spec (``vit-b-16``, ``ARCH:TAG``, a checkpoint path).
    ``kdpipe run`` parses every such setting a stage of the plan reads before the first stage runs
    (names, tags, files; no weights are loaded), except files a stage of the run writes itself."""
    return field(default=default, metadata={_MODEL_SPEC: True}, **kwargs)


def model_spec_keys(cfg: "Config") -> list[str]:
    """The dotted keys of every :func:`model_spec` setting of ``cfg``."""
    return [f"{s}.{f.name}" for s, inst in cfg.items() for f in dataclasses.fields(inst) if f.metadata.get(_MODEL_SPEC)]
