"""``kdpipe run`` and ``kdpipe status``: run the stage graph in a run directory, and inspect it.

A run directory remembers the settings it was run with (``run.json``: recipe and overrides), so
``kdpipe run all --run-dir runs/x`` after a crash resumes with the same settings, and
``kdpipe run all --run-dir runs/x --set distill.lr=0.01`` changes just that one setting.

The stages come from ``kdpipe.stages``; ``KDPIPE_STAGE_MODULES=mod_or_file.py[,...]`` loads other
stage modules instead (your own graph, or the toy graph the tests use).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from kdpipe.errors import KdpipeError

RECIPE_HELP = "recipe NAME (kdpipe/recipes/NAME.toml, e.g. default, demo) or path to a TOML file"
SET_HELP = "override one setting, e.g. --set distill.lr=0.01 (repeatable; checked against the config types)"

# Typer options shared by run and status; each shortcut maps to a config key in kdpipe.config.SHORTCUTS.
_recipe = typer.Option(None, "--recipe", "-r", help=RECIPE_HELP)
_run_dir = typer.Option(None, "--run-dir", help="run directory (default: runs/<run.name> when run.name is set, else runs/<dataset> for the default recipe, runs/<recipe>-<dataset> otherwise)")
_teacher = typer.Option(None, "--teacher", help="teacher backbone (teacher.backbone), e.g. vit-l-14")
_student = typer.Option(None, "--student", help="student backbone (student.backbone), e.g. vit-b-16")
_dataset = typer.Option(None, "--dataset", help="dataset name (data.dataset)")
_data_root = typer.Option(None, "--data-root", help="folder holding the dataset (data.root)")
_seed = typer.Option(None, "--seed", help="random seed (run.seed)")
_seeds = typer.Option(None, "--seeds", help="several seeds, e.g. 1,2,3 (run.seeds): seeded stages run once per seed")
_sets = typer.Option([], "--set", help=SET_HELP)
_allow_pipe = typer.Option(False, "--allow-pipe", help="let the recipe give pipe: shard URLs (they run shell commands); a URL given with --set needs no flag")
_jobs = typer.Option(1, "--jobs", "-j", min=1, help="stages run side by side in this many worker processes once their inputs are ready (2 suits a 2-core CPU: the baselines train while the teacher and student do)")


def _settings(run_dir: Optional[Path], recipe: Optional[str], sets: list[str], shortcuts: dict[str, Any], allow_pipe: bool = False):
    """The flags on top of what the run dir remembers; return (settings, run dir, whether it remembered any)."""
    from kdpipe.config import settings_from_cli
    from kdpipe.pipeline import GRAPH, remembered_settings
    from kdpipe.stage_graph import stage_graph

    stage_graph()  # fills GRAPH
    if run_dir is None:
        # the flags alone name the run dir, whose run.json then fills in what they leave out
        flags_only = settings_from_cli(recipe, sets, shortcuts, schema=GRAPH.schema, allow_pipe=allow_pipe)
        run_dir = default_run_dir(flags_only.config, flags_only.recipe)
    saved_recipe, remembered = remembered_settings(run_dir)
    settings = settings_from_cli(recipe or saved_recipe, sets, shortcuts, base=remembered, schema=GRAPH.schema,
                                 allow_pipe=allow_pipe)
    return settings, run_dir, bool(saved_recipe or remembered)


def check_model_specs(cfg, run_dir: Path, graph=None, target: str = "all", with_deps: bool = False,
                      downstream: bool = False) -> None:
    """Check every backbone spec (:func:`kdpipe.config.model_spec` settings) that a selected stage
    reads before the first stage runs (:func:`kdpipe.clip.backbones.check_spec`: no weights loaded,
    nothing downloaded). A file that a stage of this run writes (the demo world's checkpoints) is
    not there yet, and counts as present."""
    from kdpipe.clip.backbones import check_spec
    from kdpipe.config import model_spec_keys
    from kdpipe.pipeline import GRAPH, SEED_KEY, Plan

    keys = model_spec_keys(cfg)
    if not keys:
        return
    plan = Plan(graph if graph is not None else GRAPH, cfg)
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


def run(
    target: str = typer.Argument("all", help="'all', a stage (distill), a family member (baseline:coop) or one seed (distill@seed2)"),
    with_deps: bool = typer.Option(False, "--with-deps", help="also run what the stage needs, when not done"),
    only: bool = typer.Option(False, "--only", help="run just the named stage, not what is downstream of it (which may then be stale)"),
    force: bool = typer.Option(False, "--force", help="re-run the named stage even when it is done (from scratch); what is downstream re-runs only if its inputs changed"),
    recipe: Optional[str] = _recipe,
    run_dir: Optional[Path] = _run_dir,
    teacher: Optional[str] = _teacher,
    student: Optional[str] = _student,
    dataset: Optional[str] = _dataset,
    data_root: Optional[str] = _data_root,
    seed: Optional[str] = _seed,
    seeds: Optional[str] = _seeds,
    sets: list[str] = _sets,
    jobs: int = _jobs,
    allow_pipe: bool = _allow_pipe,
) -> None:
    """Run what is missing or stale, in order; finished stages are skipped, an interrupted one resumes.

    'kdpipe run STAGE' brings STAGE and everything downstream of it up to date (distill: then
    evaluate and report); --only runs just that stage. A downstream stage that also needs a stage
    that is not done waits, and says so.

    The run dir remembers its settings (run.json): a later command on it reuses them, and any
    recipe, shortcut or --set given then changes just those settings.
    """
    from kdpipe.pipeline import GRAPH, run_stages, write_run_settings

    shortcuts = dict(teacher=teacher, student=student, dataset=dataset, data_root=data_root, seed=seed, seeds=seeds)
    settings, rd, had_saved = _settings(run_dir, recipe, sets, shortcuts, allow_pipe)
    shown = ", ".join(f"{k}={v}" for k, v in settings.overrides.items()) or "none"
    typer.echo(f"run dir {rd}  recipe {settings.recipe}  overrides: {shown}{'  (merged with run.json)' if had_saved else ''}", err=True)
    check_model_specs(settings.config, rd, GRAPH, target, with_deps, not only)  # a bad --student fails now, not hours in
    try:
        report = run_stages(
            settings.config, rd, target=target, with_deps=with_deps, force=force, graph=GRAPH, downstream=not only,
            on_locked=lambda: write_run_settings(rd, settings.recipe, settings.overrides), jobs=jobs,
        )
    except KeyboardInterrupt:
        # typer turns Ctrl-C into a silent exit 130; say what was kept and how to go on
        typer.echo(f"interrupted: finished stages are kept; run `kdpipe run {target}{' --only' if only else ''} --run-dir {rd}` to resume", err=True)
        raise typer.Exit(130) from None
    verb = "nothing to do: everything is up to date" if not report.ran else f"ran {len(report.ran)} stage(s)"
    if report.waiting:
        verb += f", {len(report.waiting)} waiting for stages outside the selection"
    typer.echo(f"{verb}; `kdpipe status --run-dir {rd}` shows every stage", err=True)


def status(
    run_dir: Optional[Path] = _run_dir,
    recipe: Optional[str] = _recipe,
    teacher: Optional[str] = _teacher,
    student: Optional[str] = _student,
    dataset: Optional[str] = _dataset,
    data_root: Optional[str] = _data_root,
    seed: Optional[str] = _seed,
    seeds: Optional[str] = _seeds,
    sets: list[str] = _sets,
    show_config: bool = typer.Option(False, "--config", help="also print the resolved settings (every key --set accepts)"),
    as_json: bool = typer.Option(False, "--json", help="print the stages as one JSON document on stdout (for scripts; same exit status)"),
    allow_pipe: bool = _allow_pipe,
) -> None:
    """Show every stage: done / stale (and why) / missing / failed, wall time and headline metric.

    Flags work as for 'kdpipe run' without changing anything, so 'kdpipe status --set distill.lr=0.01'
    previews what that change would re-run.
    """
    from kdpipe.pipeline import GRAPH, format_status, stage_statuses, summarize

    shortcuts = dict(teacher=teacher, student=student, dataset=dataset, data_root=data_root, seed=seed, seeds=seeds)
    if run_dir is not None and not Path(run_dir).is_dir():
        raise KdpipeError(f"run dir {run_dir} does not exist (give the --run-dir of an earlier `kdpipe run`)")
    settings, rd, _ = _settings(run_dir, recipe, sets, shortcuts, allow_pipe)
    cfg = settings.config
    check_model_specs(cfg, rd, GRAPH)  # what `kdpipe run` would refuse, status reports the same way
    rows = stage_statuses(cfg, rd, graph=GRAPH)
    from kdpipe.pipeline import Plan
    from kdpipe.pipeline.seed_layout_migration import seed_layout_notes

    for line in seed_layout_notes(Plan(GRAPH, cfg), rd):  # old folders are never passed over in silence
        typer.echo(line, err=True)
    if as_json:
        import json

        from kdpipe.pipeline.status import status_document

        doc = status_document(rows, rd, settings.recipe)
        if show_config:
            doc["config"] = cfg.flat()
        typer.echo(json.dumps(doc, indent=2, default=str))
        if any(r.state == "failed" for r in rows):
            raise typer.Exit(1)
        return
    if show_config:
        for key, value in sorted(cfg.flat().items()):
            typer.echo(f"{key} = {value!r}")
        typer.echo("")
    if not rows:
        typer.echo("no stages are registered")
        return
    if sys.stdout.isatty():
        _print_rich(rows, rd)
    else:
        typer.echo(f"run dir {rd}  recipe {settings.recipe}")
        typer.echo(format_status(rows))
    typer.echo(summarize(rows))
    if any(r.state == "failed" for r in rows):
        raise typer.Exit(1)  # scripts check the exit status: a failed stage is not a healthy run


def _print_rich(rows, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from kdpipe.progress import format_duration

    colours = {"done": "green", "stale": "yellow", "missing": "dim", "failed": "red", "running": "cyan"}
    table = Table(title=f"{run_dir}", title_justify="left")
    for col in ("stage", "state", "time", "metric", "why"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.name, f"[{colours.get(r.state, 'white')}]{r.state}[/]",
            format_duration(r.wall_time_s) if r.wall_time_s is not None else "-", r.headline or "-", r.reason,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("status")(status)
