"""Ranges: a numeric setting declares the values it accepts next to its default.

``momentum: float = bounded(0.9, ge=0, lt=1)``: a bad value is refused in one line where it is parsed
(defaults, recipes, run.json, ``--set``), not deep inside a stage.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from kdpipe.config.messages import from_source
from kdpipe.errors import KdpipeError

_BOUNDS = "kdpipe_bounds"


class RangeError(KdpipeError):
    """A value of the right type outside what its setting accepts (kept through Optional types)."""


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Bounds:
    """What a numeric setting accepts: ``ge``/``gt`` below, ``le``/``lt`` above (each optional),
    ``why`` (said in the message), and ``check(value)``: a message (``"must be ..."``) or None, for
    what a range cannot say. A list setting has each item checked against the range."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.ge is not None and self.gt is not None or self.le is not None and self.lt is not None:
            raise TypeError("give at most one lower bound (ge or gt) and one upper bound (le or lt)")

    def describe(self) -> str:
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
        return ""

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is fine, else what it must be (``"must be in [0, 1)"``)."""
        if value is None:
            return None
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not math.isfinite(item):
                return "must be a finite number"
            if ((self.ge is not None and not item >= self.ge) or (self.gt is not None and not item > self.gt)
                    or (self.le is not None and not item <= self.le) or (self.lt is not None and not item < self.lt)):
                return f"must be {self.describe()}" + (f" ({self.why})" if self.why else "")
        return self.check(value) if self.check is not None else None




def bounds_metadata(**bounds: Any) -> dict[str, Any]:
    """The field metadata that declares a range (``ge=``, ``gt=``, ``le=``, ``lt=``, ``why=``, ``check=``)."""
    return {_BOUNDS: Bounds(**bounds)}


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None, why: str = "",
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field whose values must lie in a range: ``lr: float = bounded(0.002, gt=0)``,
    ``momentum: float = bounded(0.9, ge=0, lt=1)``. Checked for every value a setting gets (the
    default when its section is registered, recipes, run.json, ``--set``); None passes (an
    Optional setting left unset). For a runtime setting use ``runtime_setting(default, ge=...)``."""
    return field(default=default, default_factory=default_factory,
                 metadata=bounds_metadata(ge=ge, gt=gt, le=le, lt=lt, why=why, check=check))


def field_bounds(cls: type, name: str) -> Bounds | None:
    """The range declared for field ``name`` of dataclass ``cls``, or None. A subclass that only
    changes a default (``lr: float = 0.005``) keeps the range its base class declared, unless its
    new default lies outside it: then the setting means something else there (zero-shot's
    ``epochs = 0``: nothing to train) and the inherited range does not apply."""
    own = getattr(cls, "__dataclass_fields__", {}).get(name)
    for klass in getattr(cls, "__mro__", ()):
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and _BOUNDS in f.metadata:
            bounds = f.metadata[_BOUNDS]
            if own is not None and own is not f and _BOUNDS not in own.metadata and own.default is not dataclasses.MISSING:
                if bounds.problem(own.default):
                    return None
            return bounds
    return None


def check_range(cls: type, name: str, value: Any, key: str | None = None, source: str = "") -> None:
    """Raise a one-line KdpipeError when ``value`` is outside the range of ``cls.name``."""
    bounds = field_bounds(cls, name)
    problem = bounds.problem(value) if bounds is not None else None
    if problem:
        raise RangeError(f"{key or name} {problem}, got {value!r}{from_source(source)}")


def check_ranges(obj: Any, prefix: str = "", source: str = "") -> None:
    """Check every field of dataclass instance ``obj`` against its declared range."""
    for f in dataclasses.fields(obj):
        check_range(type(obj), f.name, getattr(obj, f.name), f"{prefix}{f.name}", source)
