"""``data.shots`` larger than a class's training images: one warning line, the real count recorded."""

from __future__ import annotations

import json

from test_pipeline_fakedata import SPLIT_SIZES, make_fake_pets


def test_more_shots_than_images_warns_once_and_records_the_real_count(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    run_dir = tmp_path / "run"
    args = ["run", "teacher", "--run-dir", str(run_dir), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
            "--dataset", "oxford_pets", "--data-root", str(make_fake_pets(tmp_path / "data")), "--seed", "1"]
    for setting in ("data.shots=20", "data.workers=0", "teacher.promptsrc.epochs=1"):
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    have = SPLIT_SIZES["train"]  # fewer than the 20 asked for, in each of the 3 base classes
    warnings = [line for line in result.output.splitlines() if "data.shots = 20" in line]
    assert len(warnings) == 1, result.output
    assert f"3 of 3 classes have fewer training images: training on {have} per class" in warnings[0]

    folder = next(p for p in run_dir.iterdir() if p.name.startswith("teacher"))
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert metrics["shots"] == have and metrics["shots_requested"] == 20
    meta = json.loads((folder / "teacher.json").read_text())
    assert (meta["shots"], meta["shots_max"], meta["shots_requested"]) == (have, have, 20)


def test_report_notes_fewer_shots_than_asked():
    from kdpipe.stages.evaluate import shots_note

    assert shots_note("teacher", {"method": "promptsrc", "shots": 16, "shots_requested": 16}) is None
    note = shots_note("baseline", {"method": "coop", "shots": 8, "shots_max": 12, "shots_requested": 16})
    assert note == "baseline coop trained on 8-12 images per class, fewer than data.shots = 16 for some classes"
