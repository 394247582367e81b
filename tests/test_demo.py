"""`kdpipe demo --quick` end to end on CPU: the world is pretrained (and cached), every stage runs
and learns, the report is written; a second demo in a new run dir takes the world from the cache.

Pretrained worlds go to a temporary $KDPIPE_CACHE, never to the user's ~/.cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

REPORT_FILES = ("results.md", "results.csv", "metrics.json", "base_novel_hm.png", "distill_curves.png")


def _demo(run_dir: Path, *extra: str):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    return CliRunner().invoke(app, ["demo", "--quick", "--run-dir", str(run_dir), *extra])


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _cache_files(cache: Path) -> dict[str, int]:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in sorted(cache.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    cache = tmp / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDPIPE_CACHE", str(cache))
        first = _demo(tmp / "run1")
        assert first.exit_code == 0, first.output
        cache_after_first = _cache_files(cache)
        second = _demo(tmp / "run2")
        assert second.exit_code == 0, second.output
    return SimpleNamespace(
        run1=tmp / "run1", run2=tmp / "run2", cache=cache, first=first, second=second,
        cache_after_first=cache_after_first, cache_after_second=_cache_files(cache),
    )


def _rows(run_dir: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((run_dir / "report" / "metrics.json").read_text())["rows"]
    return {(r["role"], r["method"]): r for r in rows}


def test_demo_writes_every_report_file_and_prints_table_and_path(demo_runs):
    report = demo_runs.run1 / "report"
    for name in REPORT_FILES:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    out = demo_runs.first.output
    assert "| promptkd | student |" in out and "| promptsrc | teacher |" in out
    assert f"report: {report.resolve()}" in out
    methods = {m for (_, m) in _rows(demo_runs.run1)}
    assert methods == {"promptsrc", "promptkd", "zeroshot", "coop", "cocoop", "maple"}


def test_pretrained_world_is_well_above_chance_on_clean_renders(demo_runs):
    metrics = _manifest(demo_runs.run1 / "world")["metrics"]
    chance = 100 / 64
    for arch in ("world-b", "world-l"):
        assert metrics[arch]["clean_zeroshot"] > 4 * chance, metrics[arch]
        assert not metrics[arch]["cached"]


def test_backbones_are_the_world_stage_checkpoints(demo_runs):
    world = (demo_runs.run1 / "world").resolve()
    rows = _rows(demo_runs.run1)
    assert rows[("teacher", "promptsrc")]["backbone"] == str(world / "world-l.safetensors")
    assert rows[("student", "promptkd")]["backbone"] == str(world / "world-b.safetensors")
    # the stages that load a backbone are downstream of the world stage: their fingerprints follow it
    for folder in ("teacher-promptsrc-seed1", "baseline-coop-seed1", "distill-seed1"):
        assert "world" in _manifest(demo_runs.run1 / folder)["upstream"], folder


def test_distillation_raises_student_teacher_agreement(demo_runs):
    m = _manifest(demo_runs.run1 / "distill-seed1")["metrics"]
    assert m["agreement"] > m["agreement_start"] + 0.05, m


def test_second_demo_in_a_new_run_dir_reuses_the_cached_world(demo_runs):
    metrics = _manifest(demo_runs.run2 / "world")["metrics"]
    assert metrics["world-b"]["cached"] and metrics["world-l"]["cached"]
    # nothing in the cache was written again, and run 2 got the very weights run 1 trained
    assert demo_runs.cache_after_second == demo_runs.cache_after_first
    assert len([k for k in demo_runs.cache_after_first if k.endswith(".safetensors")]) == 2
    for arch in ("world-b", "world-l"):
        a = (demo_runs.run1 / "world" / f"{arch}.safetensors").read_bytes()
        assert a == (demo_runs.run2 / "world" / f"{arch}.safetensors").read_bytes()


def test_run_dir_remembers_the_demo_settings(demo_runs):
    """`kdpipe status` on a demo run dir needs no flags: the recipe and the backbone paths are saved."""
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["status", "--run-dir", str(demo_runs.run1)])
    assert result.exit_code == 0, result.output
    assert "world" in result.output and "missing" not in result.output and "stale" not in result.output


def test_demo_recipe_without_the_world_weights_is_one_clear_line(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(app, ["status", "--recipe", "demo", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "untrained CLIP" in str(result.exception) and "kdpipe demo" in str(result.exception)


def test_world_stage_exists_only_for_the_world_dataset():
    import kdpipe.stages  # noqa: F401
    from kdpipe.config import resolve_config
    from kdpipe.pipeline import GRAPH, Plan

    pets = Plan(GRAPH, resolve_config("default", [("data.dataset", "oxford_pets", "test")], schema=GRAPH.schema))
    assert not any(n.startswith("world") for n in pets.instances)
    assert all("world" not in inst.deps for inst in pets.instances.values())
    demo = Plan(GRAPH, resolve_config("demo", [("teacher.backbone", "/x/world-l.safetensors", "test"),
                                              ("student.backbone", "/x/world-b.safetensors", "test")], schema=GRAPH.schema))
    needs_world = {n for n, inst in demo.instances.items() if "world" in inst.deps}
    assert {"teacher:promptsrc@seed1", "distill@seed1", "baseline:coop@seed1", "baseline:zeroshot@seed1"} <= needs_world
    assert list(demo.instances)[0] == "world"


def test_feeds_and_when_on_a_private_graph():
    from kdpipe.config import ConfigSchema, config_section  # noqa: F401
    from kdpipe.pipeline import Plan, StageGraph

    graph = StageGraph(ConfigSchema())
    switch = {"on": True}

    @graph.stage("b", deps=["a"])
    def b(ctx):
        return {}

    @graph.stage("a")
    def a(ctx):
        return {}

    @graph.stage("extra", feeds=["b"], when=lambda cfg: switch["on"])
    def extra(ctx):
        return {}

    cfg = graph.schema.defaults()
    assert Plan(graph, cfg).instances["b"].deps == ["a", "extra"]
    switch["on"] = False
    plan = Plan(graph, cfg)
    assert "extra" not in plan.instances and plan.instances["b"].deps == ["a"]
