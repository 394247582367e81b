"""``kdpipe run STAGE`` brings STAGE and everything downstream of it up to date; ``--only`` runs just
STAGE. On the toy graph of test_runner_toy_graph (prep -> train -> report; fam, sd, sd2 -> agg), through the CLI
in subprocesses so the toy stages never enter this process's registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_run_status_cli import kdpipe


def _ran(out) -> list[str]:
    return [line.split()[1] for line in out.stderr.splitlines() if line.startswith("run   ")]


def _setup(tmp_path, graph="build"):
    (tmp_path / "toy.toml").write_text("[toy]\nsteps = 3\n")
    rd = tmp_path / "runs" / "x"
    first = kdpipe(tmp_path, "run", "all", "--recipe", "toy.toml", "--run-dir", str(rd), graph=graph)
    assert first.returncode == 0, first.stderr
    return rd


def test_run_stage_also_reruns_what_is_downstream(tmp_path):
    rd = _setup(tmp_path)
    out = kdpipe(tmp_path, "run", "train", "--run-dir", str(rd), "--set", "toy.b=0.7")
    assert out.returncode == 0, out.stderr
    assert _ran(out) == ["train", "report"]  # prep is upstream: not even looked at
    assert "prep" not in out.stderr
    st = kdpipe(tmp_path, "status", "--run-dir", str(rd))
    assert st.stdout.strip().splitlines()[-1] == "3 done"


def test_only_runs_just_the_named_stage_and_leaves_downstream_stale(tmp_path):
    rd = _setup(tmp_path)
    out = kdpipe(tmp_path, "run", "train", "--only", "--run-dir", str(rd), "--set", "toy.b=0.7")
    assert out.returncode == 0, out.stderr
    assert _ran(out) == ["train"]
    st = kdpipe(tmp_path, "status", "--run-dir", str(rd))
    rows = {line.split()[0]: line for line in st.stdout.splitlines()[2:-1]}
    assert rows["report"].split()[1] == "stale" and "upstream train changed" in rows["report"]


def test_force_applies_to_the_target_and_downstream_reruns_only_when_stale(tmp_path):
    rd = _setup(tmp_path)
    # prep re-made from scratch gives the same bytes: train and report saw them already, stay done
    same = kdpipe(tmp_path, "run", "prep", "--force", "--run-dir", str(rd))
    assert same.returncode == 0, same.stderr
    assert _ran(same) == ["prep"] and "skip  train: done" in same.stderr and "skip  report: done" in same.stderr
    # a forced prep with another toy.a writes other outputs: what reads them is stale and re-runs
    changed = kdpipe(tmp_path, "run", "prep", "--force", "--run-dir", str(rd), "--set", "toy.a=7")
    assert changed.returncode == 0, changed.stderr
    assert _ran(changed) == ["prep", "train", "report"]
    assert json.loads((rd / "train" / "manifest.json").read_text())["metrics"]["resumed_from"] == 0


def test_downstream_stage_that_needs_an_unfinished_stage_outside_waits_without_failing(tmp_path):
    (tmp_path / "toy.toml").write_text("[toy]\nsteps = 3\n")
    rd = tmp_path / "r"
    prep = kdpipe(tmp_path, "run", "prep", "--only", "--recipe", "toy.toml", "--run-dir", str(rd), graph="build_expanded")
    assert prep.returncode == 0 and _ran(prep) == ["prep"], prep.stderr
    out = kdpipe(tmp_path, "run", "fam:m1", "--run-dir", str(rd), graph="build_expanded")
    assert out.returncode == 0, out.stderr
    assert _ran(out) == ["fam:m1"]
    waits = [line for line in out.stderr.splitlines() if line.startswith("wait  ")]
    assert waits == ["wait  agg: needs fam:m2, which is missing (`kdpipe run agg --with-deps` runs it)"], out.stderr
    assert "1 waiting" in out.stderr.splitlines()[-1]


def test_help_and_readme_say_what_run_stage_does(tmp_path):
    from pathlib import Path

    help_text = " ".join(kdpipe(tmp_path, "run", "--help").stdout.replace("│", " ").split())
    assert "STAGE and everything downstream of it" in help_text, help_text
    assert "--only" in help_text and "just the named stage" in help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("kdpipe run distill --set distill.lr=0.01"))
    assert line.split("#", 1)[1].strip() == "re-runs distill and what follows it (evaluate, report); --only: distill alone"


def test_api_run_follows_the_cli(tmp_path):
    rd = _setup(tmp_path)
    stages = tmp_path / "toy_cli_build.py"
    code = ("import kdpipe, json; r = kdpipe.run('train', run_dir=%r, settings={'toy.b': 0.7}); "
            "o = kdpipe.run('train', run_dir=%r, settings={'toy.b': 0.9}, only=True); print(json.dumps([r.ran, o.ran]))") % (str(rd), str(rd))
    env = dict(os.environ, KDPIPE_STAGE_MODULES=str(stages), CI="true")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["train", "report"], ["train"]]
