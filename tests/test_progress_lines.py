"""Every step that can take seconds says so: the shards stage, text-features, export and the
commands that import torch. Off a terminal the progress comes as plain lines, which also reach the
stage log."""

from __future__ import annotations

import re

import torch

from kdpipe.progress import Progress
from test_pipeline_fakedata import make_fake_pets


def test_shards_stage_prints_progress_lines_and_logs_them(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    monkeypatch.setenv("KDPIPE_PROGRESS", "plain")
    make_fake_pets(tmp_path / "data")
    rd = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "shards", "--run-dir", str(rd), "--dataset", "oxford_pets",
                                      "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    line = re.compile(r"shards: image \d+/\d+ \(100%\) [\d.]+ img/s")
    assert line.search(result.stderr), result.stderr
    assert line.search((rd / "shards" / "log.txt").read_text())


def test_text_features_report_progress_per_chunk_and_match_one_pass(tiny_teacher, capsys):
    from kdpipe.methods import build_method
    from kdpipe.eval.class_features import compute_text_features

    names = [f"class {i}" for i in range(7)]
    teacher = build_method("coop", tiny_teacher, names, overrides={"n_ctx": 2}).eval()
    whole = compute_text_features(teacher, names, 4)
    with Progress(len(names), "text-features", unit="class", plain=True) as bar:
        chunked = compute_text_features(teacher, names, 4, progress=bar, chunk=3)
    assert "text-features: class 7/7 (100%)" in capsys.readouterr().err
    assert torch.allclose(chunked.features, whole.features, atol=1e-6)
    assert chunked.classnames == names and chunked.num_base == 4


def test_export_reports_every_part_it_writes(tmp_path, tiny_student, tiny_teacher):
    from kdpipe.infer.bundle import export_bundle, export_steps
    from test_classify_bundle import make_model

    cm = make_model(tiny_student, tiny_teacher)
    parts: list[str] = []
    export_bundle(cm, tmp_path / "b", with_teacher_text=True, progress=parts.append)
    assert parts == export_steps(with_teacher_text=True) and "teacher text" in parts
    assert export_steps(with_teacher_text=False) == [p for p in parts if p != "teacher text"]


def test_models_says_what_it_waits_for_off_a_terminal(monkeypatch):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    monkeypatch.setenv("KDPIPE_PROGRESS", "plain")
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert re.search(r"loading open_clip's model list \.\.\.\n.*done in \d+s", result.stderr), result.stderr
    assert "loading" not in result.stdout  # the table alone on stdout
