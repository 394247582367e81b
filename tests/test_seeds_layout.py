"""Seeds are one dimension with one layout: a run without ``run.seeds`` is the ``run.seed`` instance
(``distill@seed1`` in ``distill-seed1/``), so adding ``--seeds 1,2,3`` later reuses it; run dirs of the
older layout (an unseeded ``distill/``) are moved to it once, and say so."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from kdpipe.config import resolve_config
from kdpipe.errors import KdpipeError
from kdpipe.io import write_json
from kdpipe.pipeline import StageGraph, run_stages, stage_statuses


def seeded_graph() -> StageGraph:
    """prep -> distill (seeded) -> report: the shape of the pipeline's seeds, with the folder names
    ``kdpipe classify`` looks for."""
    graph = StageGraph()

    @graph.schema.section("run")
    @dataclass
    class Run:
        seed: int = 1
        seeds: list[int] = field(default_factory=list)

    @graph.schema.section("toy")
    @dataclass
    class Toy:
        lr: float = 0.5

    @graph.stage("prep", outputs=["prep.json"])
    def prep(ctx):
        write_json(ctx.dir / "prep.json", {"ok": True})
        return {}

    @graph.stage("distill", reads=["toy.lr"], deps=["prep"], seeded=True, outputs=["student.json"])
    def distill(ctx):
        write_json(ctx.dir / "student.json", {"seed": ctx.seed, "lr": ctx.cfg["toy"].lr})
        return {"seed": ctx.seed}

    @graph.stage("report", deps=["distill"], outputs=["report.json"])
    def report(ctx):
        seeds = sorted(json.loads((p / "student.json").read_text())["seed"] for p in ctx.inputs_of("distill").values())
        write_json(ctx.dir / "report.json", {"seeds": seeds})
        return {"seeds": len(seeds)}

    return graph


def run(graph, rd, *sets, echo=None, **kw):
    cfg = resolve_config(None, [(k, v, "--set") for k, v in (s.split("=", 1) for s in sets)], schema=graph.schema)
    return run_stages(cfg, rd, graph=graph, echo=echo or (lambda m: None), **kw)


def student_seeds_message(rd) -> str:
    from kdpipe.infer.runs import load_run

    with pytest.raises(KdpipeError) as e:
        load_run(rd)
    return str(e.value)


def test_an_unseeded_run_is_seed_1_and_more_seeds_reuse_it(tmp_path):
    graph = seeded_graph()
    rd = tmp_path / "run"
    assert run(graph, rd).ran == ["prep", "distill@seed1", "report"]
    assert json.loads((rd / "distill-seed1" / "student.json").read_text()) == {"seed": 1, "lr": 0.5}

    more = run(graph, rd, "run.seeds=1,2,3")
    assert more.ran == ["distill@seed2", "distill@seed3", "report"] and "distill@seed1" in more.skipped
    assert sorted(p.name for p in rd.iterdir() if p.is_dir()) == ["distill-seed1", "distill-seed2", "distill-seed3", "prep", "report"]
    assert json.loads((rd / "report" / "report.json").read_text()) == {"seeds": [1, 2, 3]}
    assert student_seeds_message(rd) == f"{rd} has the student for seeds 1, 2, 3; pick one with --seed N"

    from typer.testing import CliRunner

    from kdpipe.cli import app

    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    out = CliRunner().invoke(app, ["classify", "--model", str(rd), "--input", str(tmp_path / "images"), "--out", str(tmp_path / "p.csv")])
    assert out.exit_code != 0 and str(out.exception) == f"{rd} has the student for seeds 1, 2, 3; pick one with --seed N", out.output


def test_an_unfinished_old_folder_is_named_in_one_line(tmp_path, monkeypatch):
    graph = seeded_graph()
    rd = tmp_path / "run"
    _old_layout_run(graph, rd, monkeypatch)
    (rd / "distill" / "manifest.json").unlink()
    said = []
    assert run(graph, rd, echo=said.append).ran == ["distill@seed1", "report"]
    assert [m for m in said if "older layout" in m] == [
        f"{rd}: left 1 unfinished stage folder of the older layout (no manifest to tell its seed): distill; "
        "its stage runs again in the new layout, so delete it"]


def test_another_run_seed_names_its_own_instance(tmp_path):
    graph = seeded_graph()
    rd = tmp_path / "run"
    assert run(graph, rd, "run.seed=5").ran == ["prep", "distill@seed5", "report"]
    assert json.loads((rd / "distill-seed5" / "student.json").read_text())["seed"] == 5


def _old_layout_run(graph, rd, monkeypatch, *sets):
    """A run dir as kdpipe wrote it before seeds had one layout: no run.seeds gave unseeded
    instances (``distill`` in ``distill/``), which is what the graph does when it is given no seeds."""
    with monkeypatch.context() as m:
        m.setattr(graph, "seeds", lambda cfg: [])
        assert run(graph, rd, *sets).ran == ["prep", "distill", "report"]
    assert (rd / "distill" / "manifest.json").is_file()


def test_an_old_unseeded_folder_is_moved_to_its_seed_once_and_said_so(tmp_path, monkeypatch):
    from kdpipe.pipeline import Plan
    from kdpipe.pipeline.seed_layout_migration import seed_layout_notes

    graph = seeded_graph()
    rd = tmp_path / "run"
    _old_layout_run(graph, rd, monkeypatch)
    # status says what the next run will do, and changes nothing
    assert seed_layout_notes(Plan(graph, resolve_config(None, schema=graph.schema)), rd) == [
        f"{rd}: 1 stage folder of the older layout, moved by the next `kdpipe run` on it: distill -> distill-seed1"]
    assert (rd / "distill").is_dir()
    said = []
    # nothing is stale after the move: the same settings give the same stages
    same = run(graph, rd, echo=said.append)
    assert same.ran == [] and not (rd / "distill").exists()
    moved = [m for m in said if "older layout" in m]
    assert moved == [f"{rd}: moved 1 stage folder of the older layout to its seed's name: distill -> distill-seed1"], said
    assert {s.name: s.state for s in stage_statuses(resolve_config(None, schema=graph.schema), rd, graph=graph)} == {
        "prep": "done", "distill@seed1": "done", "report": "done"}

    more = run(graph, rd, "run.seeds=1,2,3")
    assert more.ran == ["distill@seed2", "distill@seed3", "report"]
    assert student_seeds_message(rd) == f"{rd} has the student for seeds 1, 2, 3; pick one with --seed N"


def test_an_old_folder_whose_seed_is_taken_is_reported_and_never_a_phantom_seed(tmp_path, monkeypatch):
    # the state the earlier kdpipe left after `run all --seeds 1,2,3` on an unseeded run
    import shutil

    graph = seeded_graph()
    old, rd = tmp_path / "old", tmp_path / "run"
    _old_layout_run(graph, old, monkeypatch)
    run(graph, rd, "run.seeds=1,2,3")
    shutil.copytree(old / "distill", rd / "distill")
    # classify sees the old folder as the seed it ran with, not as a seed "None"
    assert student_seeds_message(rd) == f"{rd} has the student for seeds 1, 2, 3; pick one with --seed N"

    said = []
    assert run(graph, rd, "run.seeds=1,2,3", echo=said.append).ran == []
    old = [m for m in said if "older layout" in m]
    assert old == [f"{rd}: left 1 stage folder of the older layout whose seed already has its own: "
                   "distill (seed 1, see distill-seed1); delete it when you no longer need it"], said
    assert (rd / "distill").is_dir()
