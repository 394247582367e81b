"""Setting values: checking and parsing a value against its declared type, and JSON copies of them."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

from kdpipe.config.messages import from_source
from kdpipe.config.ranges import RangeError
from kdpipe.errors import KdpipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

_NONE_WORDS = {"none", "null", "~"}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "none"}.get(tp, getattr(tp, "__name__", str(tp)))


def _parse_list_text(text: str, key: str, source: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise KdpipeError(f"{key}: cannot read {text!r} as a list{from_source(source)} ({e}); write e.g. [1, 2] or 1,2") from None
    return [p.strip() for p in text.split(",") if p.strip()]


def coerce(value: Any, tp: Any, key: str = "value", source: str = "", from_text: bool = True) -> Any:
    """Check ``value`` against ``tp``. With ``from_text`` (command-line values) a string is parsed
    into ``tp``; without (TOML, which is typed already) ``"20"`` for an integer is an error."""
    bad = KdpipeError(f"{key}: expected {_type_name(tp)}, got {value!r}{from_source(source)}")
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_text and isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, source, from_text)
            except RangeError:
                raise
            except KdpipeError:
                continue
        raise bad
    if origin is typing.Literal:
        for choice in typing.get_args(tp):
            if value == choice or (from_text and isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
                return choice
        raise bad
    if origin in (list, tuple) or tp in (list, tuple):
        if from_text and isinstance(value, str):
            value = _parse_list_text(value, key, source)
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [coerce(v, inner, key, source, from_text) for v in value]
        return tuple(items) if (origin or tp) is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif from_text and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):  # no setting means nan or inf; they only fail later, far away
            raise RangeError(f"{key} must be a finite number, got {value!r}{from_source(source)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad
    return value


def jsonable(value: Any) -> Any:
    """A JSON-friendly copy of a config value (dataclasses to dicts, tuples to lists, paths to str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
