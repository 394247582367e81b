"""The resolved configuration: section name -> dataclass instance, plus member tables."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from kdpipe.config.fields import NOT_FINGERPRINTED, is_runtime_setting
from kdpipe.config.messages import suggest
from kdpipe.config.values import jsonable
from kdpipe.errors import KdpipeError

if TYPE_CHECKING:
    from kdpipe.config.schema import ConfigSchema


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
            raise KdpipeError(f"unknown config key {key!r}; {suggest(key, self.flat())}")
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
            return jsonable(self.schema.member_default(key))
        raise KdpipeError(f"unknown config key {key!r}; {suggest(key, self.flat())}")

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
