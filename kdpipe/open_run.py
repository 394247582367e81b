"""The one way to open a run directory: ``kdpipe run``, ``kdpipe status``, ``kdpipe demo`` and
:func:`kdpipe.run` all come through here, so they resolve settings and refuse bad ones alike.

Opening a run: load the stage graph, put the caller's settings on top of what the run dir
remembers (``run.json``), and check every backbone spec a selected stage reads before the first
stage starts. Running it remembers the settings once the run dir's lock is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from kdpipe.errors import KdpipeError
from kdpipe.stage_graph import stage_graph


@dataclass
class OpenRun:
    """A run dir with the settings it will run with (``settings``: config, recipe, overrides)."""

    run_dir: Path
    settings: Any  # kdpipe.config.CliSettings
    remembered: bool  # run.json contributed a recipe or settings
    graph: Any  # kdpipe.pipeline.StageGraph

    @property
    def config(self):
        return self.settings.config

    def check(self, target: str = "all", with_deps: bool = False, downstream: bool = True) -> None:
        """Refuse, in one line, a backbone spec that a selected stage would fail on hours in."""
        check_model_specs(self.config, self.run_dir, self.graph, target, with_deps, downstream)

    def run(self, target: str = "all", *, with_deps: bool = False, force: bool = False, downstream: bool = True,
            jobs: int = 1, echo: Callable[[str], None] | None = None):
        """Check, then run what is missing or stale (:func:`kdpipe.pipeline.run_stages`); the run
        dir remembers these settings once its lock is taken. Returns the RunReport."""
        from kdpipe.pipeline import run_stages, write_run_settings

        self.check(target, with_deps, downstream)
        extra = {"echo": echo} if echo is not None else {}
        return run_stages(
            self.config, self.run_dir, target=target, with_deps=with_deps, force=force, graph=self.graph,
            downstream=downstream, jobs=jobs,
            on_locked=lambda: write_run_settings(self.run_dir, self.settings.recipe, self.settings.overrides), **extra,
        )


def open_run(run_dir: str | Path | None = None, recipe: str | None = None, *, sets: tuple[str, ...] | list[str] = (),
             shortcuts: Mapping[str, Any] | None = None, values: Mapping[str, Any] | None = None,
             base: Mapping[str, tuple[Any, str]] | None = None, allow_pipe: bool = False,
             reuse_remembered: bool = True) -> OpenRun:
    """Settings for ``run_dir``: ``base`` (key -> (value, source), e.g. the demo's paths), then what
    ``run.json`` remembers (unless ``reuse_remembered`` is False: the demo always runs its own
    recipe), then the caller's shortcuts, ``--set`` items and typed ``values``.

    Without ``run_dir`` the caller's settings alone name it (:func:`default_run_dir`), and its
    ``run.json`` then fills in what they leave out."""
    from kdpipe.config import settings_from_cli
    from kdpipe.pipeline import remembered_settings

    graph = stage_graph()

    def resolve(remembered_recipe=None, remembered=None):
        given = {**(base or {}), **(remembered or {})}
        return settings_from_cli(recipe or remembered_recipe, sets, shortcuts, base=given, schema=graph.schema,
                                 allow_pipe=allow_pipe, values=values)

    if run_dir is None:
        flags_only = resolve()
        run_dir = default_run_dir(flags_only.config, flags_only.recipe)
    run_dir = Path(run_dir)
    saved_recipe, remembered = remembered_settings(run_dir) if reuse_remembered else (None, {})
    return OpenRun(run_dir, resolve(saved_recipe, remembered), bool(saved_recipe or remembered), graph)


def default_run_dir(cfg, recipe: str) -> Path:
    """``runs/<run.name>`` when a name was given, else ``runs/<dataset>`` for the default recipe and
    ``runs/<recipe>-<dataset>`` for any other (the README's examples use these names)."""
    flat = cfg.flat()
    name = flat.get("run.name")
    if not name or name == "default":
        parts = [] if recipe == "default" else [Path(str(recipe)).stem]
        if flat.get("data.dataset"):
            parts.append(str(flat["data.dataset"]))
        name = "-".join(parts) or "default"
    return Path("runs") / name


def check_model_specs(cfg, run_dir: Path, graph=None, target: str = "all", with_deps: bool = False,
                      downstream: bool = False) -> None:
    """Check every backbone spec (:func:`kdpipe.config.model_spec` settings) that a selected stage
    reads before the first stage runs (:func:`kdpipe.clip.backbones.check_spec`: no weights loaded,
    nothing downloaded). A file that a stage of this run writes (the demo world's checkpoints) is
    not there yet, and counts as present."""
    from kdpipe.clip.backbones import check_spec
    from kdpipe.config import model_spec_keys
    from kdpipe.pipeline import SEED_KEY, Plan

    keys = model_spec_keys(cfg)
    if not keys:
        return
    plan = Plan(graph if graph is not None else stage_graph(), cfg)
    reads = {r for name in plan.select(target, with_deps, downstream) for r in plan.instances[name].reads(SEED_KEY)}
    root = Path(run_dir).expanduser().resolve()
    written = {(root / inst.folder / out).resolve() for inst in plan.instances.values() for out in inst.spec.outputs}
    for key in keys:
        if key in reads or key.split(".")[0] in reads:
            spec = str(cfg.value(key))
            try:
                check_spec(spec, written)
            except KdpipeError as e:
                raise KdpipeError(f"{key} = {spec!r}: {e}") from None
