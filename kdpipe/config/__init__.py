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

One concept per module: ``ranges`` (:func:`bounded`), ``fields`` (what else a field declares),
``values`` (type checks and parsing), ``schema`` (the section registry), ``resolved`` (:class:`Config`),
``recipes`` (TOML), ``resolve`` (the layers), ``command_line`` (flags to settings). The names below
are the package's interface; import them from ``kdpipe.config``.
"""

from kdpipe.config.command_line import SHORTCUTS, CliSettings, settings_from_cli
from kdpipe.config.fields import NOT_FINGERPRINTED, field_types, is_runtime_setting, model_spec, model_spec_keys, runtime_setting
from kdpipe.config.ranges import bounded, check_ranges, field_bounds
from kdpipe.config.recipes import DEFAULT_RECIPE, list_recipes, load_recipe
from kdpipe.config.resolve import resolve_config
from kdpipe.config.resolved import Config
from kdpipe.config.schema import SCHEMA, ConfigSchema, config_section
from kdpipe.config.values import coerce, jsonable

__all__ = [
    "DEFAULT_RECIPE", "NOT_FINGERPRINTED", "SCHEMA", "SHORTCUTS", "CliSettings", "Config", "ConfigSchema",
    "bounded", "check_ranges", "coerce", "config_section", "field_bounds", "field_types", "is_runtime_setting",
    "jsonable", "list_recipes", "load_recipe", "model_spec", "model_spec_keys", "resolve_config",
    "runtime_setting", "settings_from_cli",
]
