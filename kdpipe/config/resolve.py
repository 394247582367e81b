"""Resolution: the layers of a configuration, later winning: dataclass defaults, the recipe, its
dataset overrides, then the overrides a caller gives (the command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from kdpipe.config.recipes import DEFAULT_RECIPE, RECIPES_DIR, load_recipe
from kdpipe.config.resolved import Config
from kdpipe.config.schema import SCHEMA, ConfigSchema

# The key whose value selects a recipe's [dataset_overrides.NAME] table.
DATASET_KEY = "data.dataset"


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
