"""Typed configuration: registered dataclass sections, TOML recipes and ``--set key=value`` overrides.

Every stage parameter lives in a dataclass registered with ``@config_section("distill")``. The
resolved configuration (:class:`Config`) maps each section name to an instance of its dataclass and
is built in this order, later layers winning:

1. the dataclass defaults;
2. the recipe (``kdpipe/recipes/NAME.toml`` or a path), after the recipes it ``extends``;
3. the recipe's ``[dataset_overrides.NAME]`` table for the chosen dataset;
4. what the run dir remembers, CLI shortcuts (``--teacher`` ... see :data:`SHORTCUTS`) and then
   ``--set section.key=value`` (:func:`settings_from_cli`, which every command uses).

A section may also accept *member tables*, ``section.member.key`` (``baselines.coop.epochs = 5``),
checked against a dataclass chosen per member; a stage family reads them as overrides for one member.
Every key and value is checked: an unknown key fails with the closest valid one, a value of the
wrong type fails with the type that was expected, a value outside the range declared next to its
field (:func:`bounded`: ``momentum: float = bounded(0.9, ge=0, lt=1)``) fails with that range, and
nan/inf are never a number. Fields declared with :func:`runtime_setting`
(worker counts, checkpoint intervals) change how a stage runs, not what it makes, and are left
out of stage fingerprints.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kdpipe.errors import KdpipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "default"

# The key whose value selects a recipe's [dataset_overrides.NAME] table.
DATASET_KEY = "data.dataset"

# CLI shortcut flag -> config key. The one place that ties a friendly flag to a setting: to add a
# shortcut, add a row here and an option of the same name to ``kdpipe run`` / ``kdpipe status``.
SHORTCUTS: dict[str, str] = {
    "teacher": "teacher.backbone",
    "student": "student.backbone",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "seed": "run.seed",
    "seeds": "run.seeds",
}

# Shortcuts naming a file or folder: made absolute, so a run dir's saved settings do not depend on
# the directory the next command is started from.
PATH_SHORTCUTS = {"data_root"}

# Top-level recipe keys that are not config sections.
_RECIPE_META_KEYS = {"description", "extends"}
_DATASET_OVERRIDES = "dataset_overrides"
_NONE_WORDS = {"none", "null", "~"}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}

MemberSchema = Callable[[str], "type | None"]


@dataclass
class SectionSpec:
    name: str
    cls: type
    # member name -> dataclass for ``section.member.key`` tables (None: the section has no members)
    members: MemberSchema | None = None


class ConfigSchema:
    """A registry of config sections. ``SCHEMA`` is the global one; tests build their own."""

    def __init__(self) -> None:
        self.sections: dict[str, SectionSpec] = {}

    def section(self, name: str, members: MemberSchema | None = None) -> Callable[[type], type]:
        """Class decorator: register a dataclass as config section ``name``.

        ``members(member_name)`` returns the dataclass that checks ``name.member_name.key`` values,
        or None / raises KdpipeError when ``member_name`` is not a valid member.
        """

        def wrap(cls: type) -> type:
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"config section {name!r}: {cls.__name__} must be a dataclass")
            if name in self.sections and self.sections[name].cls.__qualname__ != cls.__qualname__:
                raise ValueError(f"config section {name!r} is already registered by {self.sections[name].cls.__qualname__}")
            _check_defaults(name, cls)
            self.sections[name] = SectionSpec(name, cls, members)
            return cls

        return wrap

    # ---- keys -----------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every ``section.field`` key, sorted."""
        return sorted(f"{s}.{f.name}" for s, spec in self.sections.items() for f in dataclasses.fields(spec.cls))

    def _member_cls(self, section: str, member: str, key: str, source: str) -> type:
        spec = self.sections[section]
        if spec.members is None:
            raise KdpipeError(f"unknown config key {key!r}{_from(source)}: section {section!r} has no member tables; {_suggest(key, self.keys())}")
        cls = spec.members(member)
        if cls is None:
            raise KdpipeError(f"unknown member {member!r} in config key {key!r}{_from(source)}")
        return cls

    def check(self, key: str, value: Any, source: str = "", from_text: bool = False) -> tuple[str, str | None, str, Any]:
        """Validate ``key`` and coerce ``value`` to its declared type (parsing it when ``from_text``).

        Returns ``(section, member or None, field, typed value)``; raises KdpipeError with the
        closest valid key when the key is unknown.
        """
        parts = key.split(".")
        if parts[0] not in self.sections:
            raise KdpipeError(f"unknown config key {key!r}{_from(source)}: no section {parts[0]!r}; {_suggest(key, self.keys())}")
        if len(parts) == 2:
            section, name = parts
            cls, member = self.sections[section].cls, None
        elif len(parts) == 3:
            section, member, name = parts
            cls = self._member_cls(section, member, key, source)
        else:
            raise KdpipeError(f"bad config key {key!r}{_from(source)}: expected section.key (or section.member.key); {_suggest(key, self.keys())}")
        hints = field_types(cls)
        if name not in hints:
            valid = [f"{section}.{member}.{f}" if member else f"{section}.{f}" for f in hints]
            raise KdpipeError(f"unknown config key {key!r}{_from(source)}; {_suggest(key, valid + self.keys())}")
        typed = coerce(value, hints[name], key, source, from_text)
        check_range(cls, name, typed, key, source)
        return section, member, name, typed

    def defaults(self) -> "Config":
        return Config({name: spec.cls() for name, spec in self.sections.items()}, schema=self)


SCHEMA = ConfigSchema()
config_section = SCHEMA.section


def _from(source: str) -> str:
    return f" (from {source})" if source else ""


def _suggest(key: str, valid: Iterable[str]) -> str:
    valid = sorted(set(valid))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    section = key.split(".")[0]
    same = [k for k in valid if k.split(".")[0] == section]
    if same:
        return "valid keys: " + ", ".join(same)
    sections = sorted({k.split(".")[0] for k in valid})
    return "valid sections: " + (", ".join(sections) if sections else "(none registered)")


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> declared type of a dataclass (annotations resolved), in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


# ---- values -------------------------------------------------------------------------------------
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
            raise KdpipeError(f"{key}: cannot read {text!r} as a list{_from(source)} ({e}); write e.g. [1, 2] or 1,2") from None
    return [p.strip() for p in text.split(",") if p.strip()]


def coerce(value: Any, tp: Any, key: str = "value", source: str = "", from_text: bool = True) -> Any:
    """Check ``value`` against ``tp``. With ``from_text`` (command-line values) a string is parsed
    into ``tp``; without (TOML, which is typed already) ``"20"`` for an integer is an error."""
    bad = KdpipeError(f"{key}: expected {_type_name(tp)}, got {value!r}{_from(source)}")
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
            except _RangeError:
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
            raise _RangeError(f"{key} must be a finite number, got {value!r}{_from(source)}")
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


# ---- the resolved config ------------------------------------------------------------------------
class Config(dict):
    """Section name -> dataclass instance, plus member tables (``section -> member -> {key: value}``).

    ``cfg["distill"].lr`` reads a field; ``cfg.value("distill.lr")`` reads by dotted key;
    ``cfg.member("baselines", "coop")`` returns that member's overrides (``{}`` when none were set).
    """

    def __init__(self, sections: dict[str, Any], members: dict[str, dict[str, dict[str, Any]]] | None = None,
                 schema: ConfigSchema | None = None, recipe: str | None = None):
        super().__init__(sections)
        self.members: dict[str, dict[str, dict[str, Any]]] = members or {}
        self.schema = schema
        self.recipe = recipe  # where layer 2 came from (name or path), for the record

    def fingerprint_value(self, key: str) -> Any:
        """``value(key)`` without the :func:`runtime_setting` fields (they never make a stage stale);
        :data:`NOT_FINGERPRINTED` when ``key`` itself is one."""
        parts = key.split(".")
        value = self.value(key)
        if parts[0] not in self:
            return value
        section_cls = type(self[parts[0]])
        if len(parts) == 1:
            return {k: v for k, v in value.items() if not is_runtime_setting(section_cls, k)}
        if len(parts) == 2 and is_runtime_setting(section_cls, parts[1]):
            return NOT_FINGERPRINTED
        spec = self.schema.sections.get(parts[0]) if self.schema is not None else None
        if spec is not None and spec.members is not None and parts[1] not in {f.name for f in dataclasses.fields(section_cls)}:
            member_cls = spec.members(parts[1])
            if member_cls is not None and len(parts) == 2:
                return {k: v for k, v in value.items() if not is_runtime_setting(member_cls, k)}
            if member_cls is not None and len(parts) == 3 and is_runtime_setting(member_cls, parts[2]):
                return NOT_FINGERPRINTED
        return value

    def member(self, section: str, member: str) -> dict[str, Any]:
        return dict(self.members.get(section, {}).get(member, {}))

    def value(self, key: str) -> Any:
        """Read ``section``, ``section.field`` or ``section.member`` (a member's override table)."""
        parts = key.split(".")
        if parts[0] not in self:
            raise KdpipeError(f"unknown config key {key!r}; {_suggest(key, self.flat())}")
        section = self[parts[0]]
        if len(parts) == 1:
            return jsonable(section)
        names = {f.name for f in dataclasses.fields(section)}
        if len(parts) == 2 and parts[1] in names:
            return jsonable(getattr(section, parts[1]))
        if len(parts) == 2 and self.schema is not None and self.schema.sections[parts[0]].members is not None:
            return jsonable(self.member(parts[0], parts[1]))
        if len(parts) == 3 and self.schema is not None and self.schema.sections[parts[0]].members is not None:
            table = self.member(parts[0], parts[1])
            if parts[2] in table:
                return jsonable(table[parts[2]])
            return jsonable(_member_default(self.schema, key))
        raise KdpipeError(f"unknown config key {key!r}; {_suggest(key, self.flat())}")

    def set(self, key: str, value: Any, source: str = "", from_text: bool = False) -> None:
        """Set one dotted key after checking it against the schema (in place); ``from_text``
        parses a command-line string into the key's type."""
        if self.schema is None:
            raise KdpipeError("this Config has no schema to check keys against")
        section, member, name, typed = self.schema.check(key, value, source, from_text)
        if member is None:
            self[section] = dataclasses.replace(self[section], **{name: typed})
        else:
            self.members.setdefault(section, {}).setdefault(member, {})[name] = typed

    def with_values(self, values: dict[str, Any]) -> "Config":
        """A copy with some keys changed (e.g. the seed of one per-seed stage instance)."""
        new = self.copy()
        for key, value in values.items():
            new.set(key, value)
        return new

    def copy(self) -> "Config":
        members = {s: {m: dict(t) for m, t in ms.items()} for s, ms in self.members.items()}
        return Config(dict(self), members, self.schema, self.recipe)

    def flat(self) -> dict[str, Any]:
        """Every ``section.field`` (and ``section.member.field`` set) -> JSON value."""
        out = {}
        for s, inst in self.items():
            for f in dataclasses.fields(inst):
                out[f"{s}.{f.name}"] = jsonable(getattr(inst, f.name))
        for s, ms in self.members.items():
            for m, table in ms.items():
                for k, v in table.items():
                    out[f"{s}.{m}.{k}"] = jsonable(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {s: jsonable(inst) for s, inst in self.items()}
        for s, ms in self.members.items():
            out.setdefault(s, {}).update({m: jsonable(t) for m, t in ms.items()})
        return out


_FINGERPRINT = "kdpipe_fingerprint"
NOT_FINGERPRINTED = object()  # what fingerprint_value returns for a runtime setting


def runtime_setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A dataclass field for a setting that changes how a stage runs but not what it produces
    (DataLoader workers, checkpoint interval): it is left out of fingerprints, so changing it
    never makes a finished stage stale. Use it in place of a plain default; ``bounds`` as for
    :func:`bounded` (``runtime_setting(4, ge=0)``)."""
    metadata: dict[str, Any] = {_FINGERPRINT: False}
    if bounds:
        metadata[_BOUNDS] = Bounds(**bounds)
    return field(default=default, default_factory=default_factory, metadata=metadata)


def is_runtime_setting(cls: type, name: str) -> bool:
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    return name in fields and fields[name].metadata.get(_FINGERPRINT) is False


# ---- ranges -------------------------------------------------------------------------------------
# A numeric setting declares the values it accepts next to its default (``bounded(0.9, ge=0, lt=1)``),
# so a bad value is refused in one line where it is parsed (defaults, recipes, run.json, --set),
# not deep inside a stage.
_BOUNDS = "kdpipe_bounds"
_MODEL_SPEC = "kdpipe_model_spec"


class _RangeError(KdpipeError):
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


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None, why: str = "",
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field whose values must lie in a range: ``lr: float = bounded(0.002, gt=0)``,
    ``momentum: float = bounded(0.9, ge=0, lt=1)``. Checked for every value a setting gets (the
    default when its section is registered, recipes, run.json, ``--set``); None passes (an
    Optional setting left unset). For a runtime setting use ``runtime_setting(default, ge=...)``."""
    return field(default=default, default_factory=default_factory,
                 metadata={_BOUNDS: Bounds(ge=ge, gt=gt, le=le, lt=lt, why=why, check=check)})


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
        raise _RangeError(f"{key or name} {problem}, got {value!r}{_from(source)}")


def check_ranges(obj: Any, prefix: str = "", source: str = "") -> None:
    """Check every field of dataclass instance ``obj`` against its declared range."""
    for f in dataclasses.fields(obj):
        check_range(type(obj), f.name, getattr(obj, f.name), f"{prefix}{f.name}", source)


def _check_defaults(section: str, cls: type) -> None:
    # a default outside its own range is a programming error: say so when the section is declared
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            continue
        try:
            check_range(cls, f.name, default, f"{section}.{f.name}", "its default")
        except KdpipeError as e:
            raise ValueError(f"config section {section!r}: {e}") from None


def model_spec(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field holding a backbone spec (``vit-b-16``, ``ARCH:TAG``, a checkpoint path).
    ``kdpipe run`` parses every such setting a stage of the plan reads before the first stage runs
    (names, tags, files; no weights are loaded), except files a stage of the run writes itself."""
    return field(default=default, metadata={_MODEL_SPEC: True}, **kwargs)


def model_spec_keys(cfg: "Config") -> list[str]:
    """The dotted keys of every :func:`model_spec` setting of ``cfg``."""
    return [f"{s}.{f.name}" for s, inst in cfg.items() for f in dataclasses.fields(inst) if f.metadata.get(_MODEL_SPEC)]


def _member_default(schema: ConfigSchema, key: str) -> Any:
    # A member key that was never set reads as its dataclass default.
    section, member, name = key.split(".")
    cls = schema._member_cls(section, member, key, "")
    hints = field_types(cls)
    if name not in hints:
        raise KdpipeError(f"unknown config key {key!r}; {_suggest(key, [f'{section}.{member}.{f}' for f in hints])}")
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default.default is not dataclasses.MISSING:
        return default.default
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return default.default_factory()  # type: ignore[misc]
    return None


# ---- recipes ------------------------------------------------------------------------------------
@dataclass
class Recipe:
    name: str
    path: Path | None
    values: dict[str, Any] = field(default_factory=dict)  # dotted key -> TOML value
    dataset_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> {key: value}
    description: str = ""


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(spec: str | Path) -> Path:
    """A recipe name (``demo``) -> ``kdpipe/recipes/demo.toml``; anything path-like is used as is."""
    text = str(spec)
    looks_like_path = "/" in text or "\\" in text or text.endswith(".toml") or Path(text).exists()
    path = Path(text).expanduser() if looks_like_path else RECIPES_DIR / f"{text}.toml"
    if not path.is_file():
        if looks_like_path:
            raise KdpipeError(f"recipe file {text} not found; give a TOML file or one of: {', '.join(list_recipes())}")
        close = difflib.get_close_matches(text, list_recipes(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KdpipeError(f"unknown recipe {text!r}; {hint}available: {', '.join(list_recipes()) or '(none)'} (or give a path to a .toml file)")
    return path


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_recipe(spec: str | Path, _seen: tuple[Path, ...] = ()) -> Recipe:
    """Read a recipe and the recipes it ``extends`` (keys are checked later, against a schema)."""
    path = recipe_path(spec).resolve()
    if path in _seen:
        raise KdpipeError(f"recipe {path} extends itself (through {' -> '.join(p.name for p in _seen)})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise KdpipeError(f"recipe {path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"cannot read recipe {path}: {e}") from None
    base = Recipe(name=path.stem, path=path)
    parent = data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise KdpipeError(f"recipe {path}: 'extends' must be a recipe name or path, got {parent!r}")
        # A relative parent path is relative to the recipe that names it.
        is_path = "/" in parent or parent.endswith(".toml")
        parent_spec = str((path.parent / Path(parent).expanduser()).resolve()) if is_path else parent
        base = load_recipe(parent_spec, _seen + (path,))
    values = dict(base.values)
    overrides = {ds: dict(t) for ds, t in base.dataset_overrides.items()}
    for key, table in data.items():
        if key in _RECIPE_META_KEYS:
            continue
        if key == _DATASET_OVERRIDES:
            if not isinstance(table, dict) or not all(isinstance(t, dict) for t in table.values()):
                raise KdpipeError(f"recipe {path}: [{_DATASET_OVERRIDES}] must hold one table per dataset, e.g. [{_DATASET_OVERRIDES}.dtd]")
            for ds, t in table.items():
                overrides.setdefault(ds, {}).update(_flatten(t))
            continue
        if not isinstance(table, dict):
            raise KdpipeError(f"recipe {path}: top-level key {key!r} must be a [section] table (or one of {sorted(_RECIPE_META_KEYS)})")
        values.update(_flatten(table, key + "."))
    desc = data.get("description", base.description if parent else "")
    return Recipe(name=path.stem, path=path, values=values, dataset_overrides=overrides, description=str(desc))


# ---- resolution ---------------------------------------------------------------------------------
def parse_set(item: str) -> tuple[str, str]:
    """``"distill.lr=0.01"`` -> ``("distill.lr", "0.01")``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise KdpipeError(f"--set {item!r}: expected key=value, e.g. --set distill.lr=0.01")
    return key.strip(), value


def shortcut_overrides(**flags: Any) -> list[tuple[str, Any, str]]:
    """CLI shortcut flags (``teacher=..., seed=...``; None = not given) -> ``(key, value, source)``."""
    out = []
    for name, value in flags.items():
        if name not in SHORTCUTS:
            raise KdpipeError(f"unknown shortcut --{name.replace('_', '-')}; known: {', '.join('--' + s.replace('_', '-') for s in SHORTCUTS)}")
        if value is not None:
            if name in PATH_SHORTCUTS and "://" not in str(value):
                value = str(Path(str(value)).expanduser().resolve())
            out.append((SHORTCUTS[name], value, f"--{name.replace('_', '-')}"))
    return out


def resolve_config(
    recipe: str | Path | None = DEFAULT_RECIPE,
    overrides: Iterable[tuple[str, Any, str]] = (),
    schema: ConfigSchema | None = None,
    dataset_key: str = DATASET_KEY,
) -> Config:
    """Defaults, then the recipe, its dataset overrides, then ``overrides`` (key, value, source) in order.

    Override values that are strings are parsed into the key's type (they come from a command line);
    ``overrides`` holds the CLI shortcuts followed by the ``--set`` items, so ``--set`` wins.
    """
    schema = schema or SCHEMA
    cfg = schema.defaults()
    overrides = list(overrides)
    rec = load_recipe(recipe) if recipe is not None else None
    if rec is not None:
        cfg.recipe = str(rec.path) if rec.path and rec.path.parent != RECIPES_DIR.resolve() else rec.name
        for key, value in rec.values.items():
            cfg.set(key, value, f"recipe {rec.name}")
        for ds, table in rec.dataset_overrides.items():  # check keys even for datasets not chosen
            for key, value in table.items():
                schema.check(key, value, f"recipe {rec.name} [dataset_overrides.{ds}]")
    # The dataset has to be known before its overrides apply, and the command line may choose it.
    dataset = None
    if dataset_key in schema.keys():
        for key, value, source in overrides:
            if key == dataset_key:
                cfg.set(key, value, source, from_text=True)
        dataset = cfg.value(dataset_key)
    if rec is not None and dataset is not None and dataset in rec.dataset_overrides:
        for key, value in rec.dataset_overrides[dataset].items():
            cfg.set(key, value, f"recipe {rec.name} [dataset_overrides.{dataset}]")
    for key, value, source in overrides:
        cfg.set(key, value, source, from_text=True)
    return cfg


def runs_a_command(value: Any) -> bool:
    """Whether a setting holds a ``pipe:`` URL anywhere (also inside a brace or ``::`` pattern)."""
    if isinstance(value, str):
        return "pipe:" in value
    if isinstance(value, (list, tuple)):
        return any(runs_a_command(v) for v in value)
    if isinstance(value, dict):
        return any(runs_a_command(v) for v in value.values())
    return False


@dataclass
class CliSettings:
    """What a command made of its flags: the config, and what its run dir should remember."""

    config: Config
    recipe: str  # as given (a name or a path), for run.json
    overrides: dict[str, Any]  # key -> value as given (command-line strings), for run.json


def settings_from_cli(
    recipe: str | None,
    sets: Iterable[str] = (),
    shortcuts: Mapping[str, Any] | None = None,
    base: Mapping[str, tuple[Any, str]] | None = None,
    schema: ConfigSchema | None = None,
    allow_pipe: bool = False,
    values: Mapping[str, Any] | None = None,
) -> CliSettings:
    """The one way a command turns its flags into settings (``kdpipe run``, ``status``, ``demo``).

    On top of the recipe (:data:`DEFAULT_RECIPE` when None) go, later winning: ``base`` (key ->
    (value, source): what a run dir remembers, or what ``kdpipe demo`` sets), the shortcut flags
    (None = not given), then the ``--set`` items and ``values`` (typed, from a Python caller). Each
    key is kept once, so the overrides saved for the next command hold only the value that won.

    A ``pipe:`` shard URL runs a shell command, so it is taken from the command line only; from a
    recipe only with ``allow_pipe`` (``--allow-pipe``); from what a run dir remembers never.
    """
    command_line = {key: (value, source) for key, value, source in shortcut_overrides(**(shortcuts or {}))}
    command_line.update({key: (value, f"--set {key}={value}") for key, value in map(parse_set, sets)})
    # typed values from a Python caller (kdpipe.run): its command line, kept as given
    command_line.update({key: (value, f"{key}={value!r} (from Python)") for key, value in (values or {}).items()})
    given = dict(base or {})
    given.update(command_line)
    recipe = recipe or DEFAULT_RECIPE
    cfg = resolve_config(recipe, [(key, value, source) for key, (value, source) in given.items()], schema=schema)
    for key, value in cfg.flat().items():
        if key in command_line or not runs_a_command(value):
            continue
        if key in given:
            raise KdpipeError(
                f"{key} = {value!r} ({given[key][1]}) would run a shell command, and kdpipe never runs commands "
                f"from files it finds; if you mean it, give it on the command line: --set {key}=..."
            )
        if not allow_pipe:
            raise KdpipeError(
                f"{key} = {value!r} in recipe {recipe} would run a shell command; pass --allow-pipe if you trust "
                f"this recipe, or give the URL on the command line (--set {key}=...)"
            )
    return CliSettings(cfg, recipe, {key: value for key, (value, _) in given.items()})

