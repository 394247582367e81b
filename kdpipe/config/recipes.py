"""TOML recipes: ``kdpipe/recipes/NAME.toml`` or a path, the recipes they ``extends``, and their
``[dataset_overrides.NAME]`` tables (keys are checked later, against a schema)."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

RECIPES_DIR = Path(__file__).parent.parent / "recipes"
DEFAULT_RECIPE = "default"

# Top-level recipe keys that are not config sections.
_RECIPE_META_KEYS = {"description", "extends"}
_DATASET_OVERRIDES = "dataset_overrides"


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
