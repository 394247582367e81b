"""Cross-dataset mode: teacher and baselines learn few-shot from a source dataset, the student is
distilled on the target's unlabeled images, and every method is scored on all target classes."""

from __future__ import annotations

import json

from test_pipeline_fakedata import TEXTURES, make_fake_dtd, make_fake_pets


def test_cross_dataset_run_scores_all_target_classes(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    root = make_fake_dtd(make_fake_pets(tmp_path / "data"))
    sets = {
        "data.source": "oxford_pets", "data.shots": 2, "data.workers": 0, "teacher.promptsrc.epochs": 1,
        "baselines.methods": "zeroshot", "distill.epochs": 2, "distill.lr": 0.001, "distill.workers": 0, "distill.allow_weak_teacher": True,
        "shards.holdout_fraction": 0.2,
    }
    args = ["run", "all", "--recipe", "cross-dataset", "--run-dir", str(tmp_path / "run"), "--teacher", "kd-tiny-t",
            "--student", "kd-tiny-s", "--dataset", "dtd", "--data-root", str(root)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    run = tmp_path / "run"
    teacher = json.loads((run / "teacher-promptsrc-seed1" / "teacher.json").read_text())
    assert teacher["classnames"] == ["red fox", "green frog", "blue jay", "yellow lab", "purple finch", "orange cat"]
    student = json.loads((run / "distill-seed1" / "student.json").read_text())
    assert student["classnames"] == list(TEXTURES) and student["config"]["depth"] == 3  # the recipe's shallower prompts
    metrics = json.loads((run / "evaluate-seed1" / "metrics.json").read_text())
    assert metrics["mode"] == "cross" and metrics["base_classes"] == metrics["classes"] == len(TEXTURES)
    for row in metrics["rows"]:
        assert row["dataset"] == "dtd" and row["base"] is None and row["hm"] is None and 0 <= row["accuracy"] <= 100
    assert "learned few-shot from oxford_pets" in metrics["notes"][0]
    assert (run / "report" / "base_novel_hm.png").stat().st_size > 5000
