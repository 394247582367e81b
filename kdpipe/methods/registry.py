"""Name -> method class, filled by ``@register_method`` in each method's own file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from kdpipe.errors import KdpipeError

if TYPE_CHECKING:
    from kdpipe.clip import Backbone
    from kdpipe.methods.base import PromptMethod

_METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`PromptMethod` subclass available as ``name``."""

    def add(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    """Registered method names, in registration order (zero-shot first, the student last)."""
    return list(_METHODS)


def get_method(name: str) -> type:
    if name not in _METHODS:
        raise KdpipeError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def build_method(
    name: str,
    backbone: "Backbone",
    classnames: list[str],
    overrides: dict[str, Any] | None = None,
    dataset: str | None = None,
) -> "PromptMethod":
    """A method on a frozen backbone: its reference defaults, then the dataset's, then ``overrides``."""
    cls = get_method(name)
    cfg = cls.config_cls.resolve(dataset=dataset, overrides=overrides)
    return cls(backbone, classnames, cfg, dataset=dataset)
