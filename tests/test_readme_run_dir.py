"""The README's "Real use" commands name the run dir that ``kdpipe run`` really uses, and
``kdpipe run --help`` describes the same default."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"
FLAG_TO_SHORTCUT = {"--teacher": "teacher", "--student": "student", "--dataset": "dataset", "--data-root": "data_root"}


def _real_use_commands() -> list[list[str]]:
    text = README.read_text()
    block = text.split("## Real use", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.startswith("kdpipe ")]


def _run_dir_of(args: list[str]) -> Path:
    from kdpipe.open_run import default_run_dir
    from kdpipe.config import settings_from_cli
    from kdpipe.pipeline import GRAPH
    from kdpipe.stage_graph import stage_graph

    stage_graph()
    shortcuts = {FLAG_TO_SHORTCUT[f]: v for f, v in zip(args, args[1:]) if f in FLAG_TO_SHORTCUT}
    recipe = dict(zip(args, args[1:])).get("--recipe")
    settings = settings_from_cli(recipe, [], shortcuts, schema=GRAPH.schema)
    return default_run_dir(settings.config, settings.recipe)


def test_readme_run_dirs_are_the_ones_kdpipe_run_uses():
    commands = _real_use_commands()
    first = commands[0]
    assert first[:3] == ["kdpipe", "run", "all"] and "--run-dir" not in first
    used = _run_dir_of(first)
    assert used == Path("runs/oxford_pets")
    # every later command that names a run dir (status, export, classify) names that one, or a copy
    # the README makes of the demo's run dir (`kdpipe demo`'s default, runs/demo) with `cp -a`
    text = README.read_text()
    named = re.findall(r"(?:--run-dir|--model) (runs/\S+)", text)
    copies = set(re.findall(r"cp -a runs/demo (runs/demo-\S+)", text))
    others = [n for n in named if n != used.as_posix()]
    assert used.as_posix() in named and set(others) <= copies, others
    # a recipe other than the default prefixes the dataset
    assert _run_dir_of(["kdpipe", "run", "all", "--recipe", "cross-dataset", "--dataset", "dtd"]) == Path("runs/cross-dataset-dtd")


def test_run_help_states_the_default_run_dir():
    from kdpipe.cli import app

    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert out.exit_code == 0, out.output
    flat = " ".join(out.output.replace("│", " ").split())
    assert "runs/<dataset> for the default recipe, runs/<recipe>-<dataset> otherwise" in flat, flat
