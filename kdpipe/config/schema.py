"""The registry of config sections: ``@config_section("distill")`` on a dataclass, and the checks
every ``section.key`` (or ``section.member.key``) and its value go through."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from kdpipe.config.fields import field_default, field_types
from kdpipe.config.messages import from_source, suggest
from kdpipe.config.ranges import check_range
from kdpipe.config.resolved import Config
from kdpipe.config.values import coerce
from kdpipe.errors import KdpipeError

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
            raise KdpipeError(f"unknown config key {key!r}{from_source(source)}: section {section!r} has no member tables; {suggest(key, self.keys())}")
        cls = spec.members(member)
        if cls is None:
            raise KdpipeError(f"unknown member {member!r} in config key {key!r}{from_source(source)}")
        return cls

    def check(self, key: str, value: Any, source: str = "", from_text: bool = False) -> tuple[str, str | None, str, Any]:
        """Validate ``key`` and coerce ``value`` to its declared type (parsing it when ``from_text``).

        Returns ``(section, member or None, field, typed value)``; raises KdpipeError with the
        closest valid key when the key is unknown.
        """
        parts = key.split(".")
        if parts[0] not in self.sections:
            raise KdpipeError(f"unknown config key {key!r}{from_source(source)}: no section {parts[0]!r}; {suggest(key, self.keys())}")
        if len(parts) == 2:
            section, name = parts
            cls, member = self.sections[section].cls, None
        elif len(parts) == 3:
            section, member, name = parts
            cls = self._member_cls(section, member, key, source)
        else:
            raise KdpipeError(f"bad config key {key!r}{from_source(source)}: expected section.key (or section.member.key); {suggest(key, self.keys())}")
        hints = field_types(cls)
        if name not in hints:
            valid = [f"{section}.{member}.{f}" if member else f"{section}.{f}" for f in hints]
            raise KdpipeError(f"unknown config key {key!r}{from_source(source)}; {suggest(key, valid + self.keys())}")
        typed = coerce(value, hints[name], key, source, from_text)
        check_range(cls, name, typed, key, source)
        return section, member, name, typed


    def member_default(self, key: str) -> Any:
        """The dataclass default of ``section.member.key``: what a member key that was never set reads as."""
        section, member, name = key.split(".")
        cls = self._member_cls(section, member, key, "")
        hints = field_types(cls)
        if name not in hints:
            raise KdpipeError(f"unknown config key {key!r}; {suggest(key, [f'{section}.{member}.{f}' for f in hints])}")
        default = field_default({f.name: f for f in dataclasses.fields(cls)}[name])
        return None if default is dataclasses.MISSING else default

    def defaults(self) -> Config:
        return Config({name: spec.cls() for name, spec in self.sections.items()}, schema=self)


def _check_defaults(section: str, cls: type) -> None:
    # a default outside its own range is a programming error: say so when the section is declared
    for f in dataclasses.fields(cls):
        default = field_default(f)
        if default is dataclasses.MISSING:
            continue
        try:
            check_range(cls, f.name, default, f"{section}.{f.name}", "its default")
        except KdpipeError as e:
            raise ValueError(f"config section {section!r}: {e}") from None


SCHEMA = ConfigSchema()
config_section = SCHEMA.section
