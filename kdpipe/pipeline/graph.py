"""The stage registry: what a stage is (:class:`StageSpec`), how one registration becomes concrete
instances for a config (families and seeds), and the global :data:`GRAPH` stages register with.

The engine is handed a filled graph by its callers and never imports a stage module itself."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from kdpipe.config import SCHEMA, Config, ConfigSchema
from kdpipe.errors import KdpipeError

if TYPE_CHECKING:
    from kdpipe.pipeline.context import StageContext

SEED_KEY = "run.seed"
SEEDS_KEY = "run.seeds"
STAGE_MODULES_ENV = "KDPIPE_STAGE_MODULES"

StageFn = Callable[["StageContext"], "dict[str, Any] | None"]


def folder_name(instance_name: str) -> str:
    """``baseline:coop@seed1`` -> ``baseline-coop-seed1`` (safe on every file system)."""
    return instance_name.replace(":", "-").replace("@", "-")


def instance_name(stage: str, member: str | None, seed: int | None) -> str:
    """``("baseline", "coop", 1)`` -> ``baseline:coop@seed1``: how an instance is named (and its
    manifest's ``stage``); member None is an unexpanded stage or a family's plainly named instance."""
    return stage + (f":{member}" if member else "") + (f"@seed{seed}" if seed is not None else "")


def parse_instance(name: str) -> tuple[str, str | None, int | None]:
    """The inverse of :func:`instance_name`: (stage, member or None, seed or None)."""
    rest, _, seed = name.partition("@seed")
    stage, _, member = rest.partition(":")
    return stage, member or None, int(seed) if seed.isdigit() else None


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: StageFn
    reads: tuple[str, ...] = ()  # dotted keys or whole sections; may contain "{member}"
    # registered stage names (a family name means all its members; "family:{member}": the member
    # of the same name as this instance's)
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # files (or glob patterns) the stage must leave in its folder
    identity: Callable[[Config], Any] | None = None  # identity of user inputs (e.g. dir_listing)
    expand: Callable[[Config], list[str]] | None = None  # family: config -> member names
    seeded: bool = False  # one instance per seed of run.seeds
    headline: str | None = None  # metric shown by ``kdpipe status``
    version: int = 1  # bump when the stage's code changes what it writes: old results go stale
    description: str = ""
    # optional stages: ``feeds`` names stages that depend on this one without naming it (a demo
    # stage upstream of the pipeline's own), ``when(cfg)`` False gives the stage no instances
    feeds: tuple[str, ...] = ()
    when: Callable[[Config], bool] | None = None
    # family: the member whose instance keeps the stage's plain name (member None, as an unexpanded
    # stage), so a family that grew out of a single stage keeps that stage's folder and fingerprint
    plain: Callable[[Config], str] | None = None


@dataclass
class Instance:
    """One concrete stage to run: a registration, its family member and its seed."""

    name: str
    spec: StageSpec
    member: str | None
    seed: int | None
    deps: list[str]
    folder: str
    plain_member: str | None = None  # the family member a plainly named instance stands for

    def reads(self, seed_key: str) -> list[str]:
        keys = [r.replace("{member}", self.member or self.plain_member or "") for r in self.spec.reads]
        if self.spec.seeded and seed_key not in keys:
            keys.append(seed_key)
        return keys


class StageGraph:
    """A registry of stages with the config schema they read. ``GRAPH`` is the global one."""

    def __init__(self, schema: ConfigSchema | None = None, seed_key: str = SEED_KEY, seeds_key: str = SEEDS_KEY):
        self.schema = schema if schema is not None else ConfigSchema()
        self.seed_key = seed_key
        self.seeds_key = seeds_key
        self.specs: dict[str, StageSpec] = {}
        # (Python file or module, builder name): how worker processes rebuild a graph other than
        # the global one for ``run_stages(jobs > 1)``; builder(StageGraph()) returns the graph
        self.source: tuple[str, str] | None = None

    def stage(
        self,
        name: str,
        reads: Iterable[str] = (),
        deps: Iterable[str] = (),
        outputs: Iterable[str] = (),
        identity: Callable[[Config], Any] | None = None,
        expand: Callable[[Config], list[str]] | None = None,
        seeded: bool = False,
        headline: str | None = None,
        version: int = 1,
        description: str = "",
        feeds: Iterable[str] = (),
        when: Callable[[Config], bool] | None = None,
        plain: Callable[[Config], str] | None = None,
    ) -> Callable[[StageFn], StageFn]:
        """Decorator registering ``fn(ctx) -> metrics`` as stage ``name`` (see the module docs)."""
        if not name or any(c in name for c in ":@/\\ "):
            raise ValueError(f"stage name {name!r} must be non-empty without ':', '@', '/', spaces")

        def wrap(fn: StageFn) -> StageFn:
            old = self.specs.get(name)
            if old is not None and old.fn.__qualname__ != fn.__qualname__:
                raise ValueError(f"stage {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
            self.specs[name] = StageSpec(
                name=name, fn=fn, reads=tuple(reads), deps=tuple(deps), outputs=tuple(outputs), identity=identity,
                expand=expand, seeded=seeded, headline=headline, version=version,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
                feeds=tuple(feeds), when=when, plain=plain,
            )
            return fn

        return wrap

    # ---- planning -------------------------------------------------------------------------------
    def deps_of(self, name: str) -> tuple[str, ...]:
        """The stages ``name`` needs: its own ``deps`` plus the registered stages that ``feed`` it."""
        fed_by = tuple(s.name for s in self.specs.values() if name in s.feeds and s.name != name)
        return self.specs[name].deps + tuple(d for d in fed_by if d not in self.specs[name].deps)

    def _order(self) -> list[StageSpec]:
        order: list[StageSpec] = []
        state: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise KdpipeError(f"stage graph has a cycle: {' -> '.join(path + (name,))}")
            state[name] = 1
            for dep in self.deps_of(name):
                base = dep.split(":")[0]
                if base not in self.specs:
                    raise KdpipeError(f"stage {name!r} needs {dep!r}, which is not registered; {closest(base, list(self.specs))}")
                visit(base, path + (name,))
            state[name] = 2
            order.append(self.specs[name])

        for name in self.specs:
            visit(name, ())
        return order

    def seeds(self, cfg: Config) -> list[int]:
        """The seeds a seeded stage runs once each with: ``run.seeds``, else ``[run.seed]``.

        A run without ``run.seeds`` is the instance of its one seed (``distill@seed1``, folder
        ``distill-seed1``), not a layout of its own: adding ``--seeds 1,2,3`` later finds seed 1 done.
        """
        keys = self.schema.keys()
        if self.seeds_key not in keys:
            return []
        seeds = [int(s) for s in (cfg.value(self.seeds_key) or [])]
        if len(set(seeds)) != len(seeds):
            raise KdpipeError(f"{self.seeds_key} lists a seed twice: {seeds}")
        if not seeds and self.seed_key in keys:
            seeds = [int(cfg.value(self.seed_key))]
        return seeds

    def instances(self, cfg: Config) -> dict[str, Instance]:
        """Expand families and seeds into instances, in dependency order (a :class:`Plan` holds them)."""
        seeds = self.seeds(cfg)
        by_spec: dict[str, list[Instance]] = {}
        instances: dict[str, Instance] = {}
        for spec in self._order():
            if spec.seeded and self.seed_key not in self.schema.keys():
                raise KdpipeError(f"stage {spec.name!r} is seeded but no config key {self.seed_key!r} is registered")
            members: list[str | None] = [None]
            if spec.when is not None and not spec.when(cfg):
                members = []
            elif spec.expand is not None:
                members = list(spec.expand(cfg))
                for m in members:
                    if not isinstance(m, str) or not m or any(c in m for c in ":@/\\ "):
                        raise KdpipeError(f"stage family {spec.name!r}: bad member name {m!r}")
                if len(set(members)) != len(members):
                    raise KdpipeError(f"stage family {spec.name!r} lists a member twice: {members}")
            seed_list: list[int | None] = list(seeds) if (spec.seeded and seeds) else [None]
            plain = spec.plain(cfg) if (spec.plain is not None and members) else None
            by_spec[spec.name] = []
            for member in members:
                shown = None if member == plain else member
                for seed in seed_list:
                    name = instance_name(spec.name, shown, seed)
                    deps: list[str] = []
                    for dep in self.deps_of(spec.name):
                        base, _, want_member = dep.partition(":")
                        want_member = want_member.replace("{member}", member or "")
                        for d in by_spec[base]:
                            if want_member and (d.member or d.plain_member) != want_member:
                                continue
                            if seed is not None and d.seed is not None and d.seed != seed:
                                continue
                            deps.append(d.name)
                    inst = Instance(name, spec, shown, seed, deps, folder_name(name), plain_member=plain if shown is None else None)
                    by_spec[spec.name].append(inst)
                    instances[name] = inst
        return instances

    def load_modules(self, modules: Iterable[str]) -> "StageGraph":
        """Import ``modules`` (module names or .py files), whose ``register_stage`` calls fill the
        registry they name (:data:`GRAPH` for the pipeline's own). The engine never picks the
        modules: its callers do (:mod:`kdpipe.stage_graph` for the CLI, ``kdpipe.run()`` and the demo)."""
        for item in (m.strip() for m in modules):
            if item:
                _import_module_or_file(item)
        return self


def _import_module_or_file(item: str) -> None:
    if item.endswith(".py") or os.sep in item:
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise KdpipeError(f"{STAGE_MODULES_ENV}: {item} is not a file")
        name = f"kdpipe_user_stages_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        if name in sys.modules:
            return
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(item)
        except ModuleNotFoundError as e:
            raise KdpipeError(f"{STAGE_MODULES_ENV}: cannot import {item!r} ({e})") from None


GRAPH = StageGraph(SCHEMA)
register_stage = GRAPH.stage


def closest(name: str, options: Iterable[str]) -> str:
    options = sorted(set(options))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else "known: " + (", ".join(options) or "(none)")


