"""``kdpipe demo``: the whole PromptKD pipeline on the demo world, offline, on a CPU.

It renders the shifted downstream world into ``RUN_DIR/data``, points the teacher and student
backbones at the world stage's pretrained weights (``RUN_DIR/world/world-{l,b}.safetensors``),
runs every stage of the ``demo`` recipe (``--quick``: ``demo-quick``) and prints the results
table, the targets of the demo and where the report is. The run dir remembers these settings, so
``kdpipe status --run-dir RUN_DIR`` and ``kdpipe run STAGE --run-dir RUN_DIR`` work on it after.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

RECIPES = {False: "demo", True: "demo-quick"}


def demo_overrides(run_dir: Path) -> dict[str, str]:
    """The settings a demo run dir needs beyond its recipe: where its data and backbones live."""
    from kdpipe.stages.world import world_backbone_specs

    run_dir = Path(run_dir).expanduser().resolve()
    return {"data.root": str(run_dir / "data"), **world_backbone_specs(run_dir)}


def run_demo(run_dir: Path, quick: bool = False, sets: tuple[str, ...] = (), echo=None, jobs: int = 1) -> dict[str, Any]:
    """Render, run every stage and return ``{"report": folder, "results": markdown, "targets": [...]}``."""
    from kdpipe.config import settings_from_cli
    from kdpipe.pipeline import GRAPH, run_stages, write_run_settings
    from kdpipe.stage_graph import stage_graph
    from kdpipe.stages.world import prepare_world_data

    stage_graph()  # fills GRAPH
    paths = {key: (value, "kdpipe demo") for key, value in demo_overrides(run_dir).items()}
    settings = settings_from_cli(RECIPES[quick], sets, base=paths, schema=GRAPH.schema)
    say = echo or (lambda msg: typer.echo(msg, err=True))
    say(f"demo: recipe {settings.recipe}, run dir {run_dir}")
    prepare_world_data(settings.config, progress=True)
    report = run_stages(settings.config, run_dir, target="all", graph=GRAPH, echo=say,
                        on_locked=lambda: write_run_settings(run_dir, settings.recipe, settings.overrides), jobs=jobs)
    report_dir = Path(run_dir) / "report"
    return {
        "report": report_dir,
        "results": (report_dir / "results.md").read_text(encoding="utf-8"),
        "targets": check_targets(Path(run_dir)),
        "ran": report.ran,
    }


def check_targets(run_dir: Path) -> list[tuple[str, bool, str]]:
    """The demo's targets (issue: the teacher is stronger, the method works), measured on this run:
    ``(what, met, numbers)``; seed-mean rows when there are several seeds."""
    world = _metrics(run_dir / "world")
    rows = json.loads((run_dir / "report" / "metrics.json").read_text(encoding="utf-8"))["rows"]
    seeds = {r["seed"] for r in rows}
    pick = "mean" if "mean" in seeds else min(seeds)
    by = {(r["role"], r["method"]): r for r in rows if r["seed"] == pick}
    student = next(r for (role, _), r in by.items() if role == "student")
    teacher = next(r for (role, _), r in by.items() if role == "teacher")
    zeroshot, coop = by.get(("baseline", "zeroshot")), by.get(("baseline", "coop"))
    out = []
    if world:
        big, small = world["world-l"]["hm"], world["world-b"]["hm"]
        out.append(("world-l zero-shot HM >= world-b zero-shot HM + 5", big >= small + 5, f"{big:.1f} vs {small:.1f}"))
    if zeroshot:
        out.append(("student HM >= student zero-shot HM + 3", student["hm"] >= zeroshot["hm"] + 3, f"{student['hm']:.1f} vs {zeroshot['hm']:.1f}"))
    if coop:
        out.append(("student novel > student CoOp novel", student["novel"] > coop["novel"], f"{student['novel']:.1f} vs {coop['novel']:.1f}"))
    out.append(("student HM >= 0.9 x teacher HM", student["hm"] >= 0.9 * teacher["hm"], f"{student['hm']:.1f} vs 0.9 x {teacher['hm']:.1f}"))
    return out


def _metrics(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["metrics"]
    except (OSError, ValueError, KeyError):
        return {}


def demo(
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where the run goes (default runs/demo, with --quick runs/demo-quick); a second demo in it only re-runs what changed"),
    quick: bool = typer.Option(False, "--quick", help="a much smaller budget (minutes): every stage runs and learns, numbers are rougher"),
    sets: list[str] = typer.Option([], "--set", help="override one setting, e.g. --set distill.epochs=5 (repeatable)"),
    jobs: int = typer.Option(min(2, os.cpu_count() or 1), "--jobs", "-j", min=1, help="stages side by side in this many single-threaded worker processes (default: 2 on 2+ cores)"),
) -> None:
    """Run the whole pipeline on the demo world (rendered shapes, tiny CLIPs pretrained here), offline on a CPU.

    Pretrained worlds are cached in $KDPIPE_CACHE (default ~/.cache/kdpipe), so a second demo skips pretraining.
    """
    # tiny models on a shared CPU: OpenMP spin-waiting makes small ops many times slower
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.monotonic()
    # quick and full runs in one folder would keep re-running each other's stages
    run_dir = run_dir if run_dir is not None else Path("runs") / RECIPES[quick]
    result = run_demo(run_dir, quick=quick, sets=tuple(sets), jobs=jobs)
    typer.echo("")
    typer.echo(result["results"].rstrip())
    typer.echo("")
    typer.echo("Demo targets:")
    for what, met, numbers in result["targets"]:
        typer.echo(f"  [{'met' if met else 'MISSED'}] {what}: {numbers}")
    typer.echo("")
    minutes = (time.monotonic() - start) / 60
    typer.echo(f"report: {result['report'].resolve()} (results.md, results.csv, metrics.json, plots); {minutes:.1f} min")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
