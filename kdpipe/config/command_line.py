"""From a command's flags to settings: ``--set key=value``, the shortcut flags (``--teacher`` ...),
what a run dir remembers, and the rule that a ``pipe:`` URL comes from the command line only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from kdpipe.config.recipes import DEFAULT_RECIPE
from kdpipe.config.resolve import resolve_config
from kdpipe.config.resolved import Config
from kdpipe.config.schema import ConfigSchema
from kdpipe.errors import KdpipeError

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

