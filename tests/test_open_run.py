"""One way to open a run: the CLI, ``kdpipe.run()`` and the demo resolve settings and check them the
same way, before the first stage starts."""

from __future__ import annotations

import pytest

import kdpipe
from kdpipe.errors import KdpipeError
from test_pipeline_fakedata import make_fake_pets


def _settings(data_root, student: str) -> dict:
    return {"teacher.backbone": "kd-tiny-t", "student.backbone": student, "data.dataset": "oxford_pets",
            "data.root": str(data_root), "data.shots": 2, "data.workers": 0, "teacher.promptsrc.epochs": 1,
            "baselines.methods": "zeroshot"}


def test_the_api_refuses_a_bad_backbone_before_any_stage_runs(tmp_path):
    data_root = make_fake_pets(tmp_path / "data")
    run_dir = tmp_path / "run"
    with pytest.raises(KdpipeError, match="student.backbone = 'no-such-model-xyz'"):
        kdpipe.run(run_dir=run_dir, settings=_settings(data_root, "no-such-model-xyz"))
    finished = [p.parent.name for p in run_dir.glob("*/manifest.json")]
    assert finished == []  # the teacher did not train for an hour before the student's spec failed


def test_cli_and_api_open_a_run_dir_with_the_same_settings(tmp_path):
    """What kdpipe.run() remembers in run.json, the CLI's opening reads back, and vice versa."""
    from kdpipe.open_run import open_run

    data_root = make_fake_pets(tmp_path / "data")
    run_dir = tmp_path / "run"
    kdpipe.run("shards", run_dir=run_dir, settings=_settings(data_root, "kd-tiny-s"), only=True)
    reopened = open_run(run_dir, sets=["distill.lr=0.01"])
    assert reopened.remembered
    flat = reopened.config.flat()
    assert flat["student.backbone"] == "kd-tiny-s" and flat["data.shots"] == 2 and flat["distill.lr"] == 0.01
    assert (run_dir / "shards" / "manifest.json").exists()
