"""Issue 24's distill settings in a real run (tiny backbones, the fake pets dataset, CPU, one seed):
the vocabulary's teacher text features are stored once by their own stage, ``best_val`` keeps and
records an epoch, and the teacher gate's two numbers reach the report (or stop the run)."""

from __future__ import annotations

import shutil

import pytest

from test_multi_teacher import SETTINGS, _run
from test_pipeline_fakedata import make_fake_pets

DISTRACTORS = ["red circle", "blue square", "a tractor", "a violin"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill_options")
    data_root = make_fake_pets(tmp / "data")
    run_dir = tmp / "run"
    assert "report" in _run(run_dir, data_root).ran
    return run_dir, data_root


def _manifest(run_dir, folder):
    from kdpipe.pipeline import read_manifest

    return read_manifest(run_dir / folder)


def test_vocabulary_features_are_stored_once_and_the_student_keeps_the_datasets_classes(finished, tmp_path):
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.io import read_json

    src, data_root = finished
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    classes = read_class_features(run_dir / "text-features-seed1" / "text_features.safetensors").classnames
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join([*classes, *DISTRACTORS]) + "\n")
    settings = {"distill.vocabulary": str(vocab), "distill.vocabulary_top_k": 4}
    report = _run(run_dir, data_root, settings=settings)
    assert set(report.ran) == {"vocabulary-features@seed1", "distill@seed1", "evaluate@seed1", "report"}
    vf = read_class_features(run_dir / "vocabulary-features-seed1" / "vocabulary_features.safetensors")
    assert vf.classnames == [*classes, *DISTRACTORS] and vf.features.shape[0] == len(classes) + len(DISTRACTORS)
    assert read_json(run_dir / "distill-seed1" / "student.json")["classnames"] == list(classes)
    # another K re-runs the distillation only: the vocabulary's rows are not computed again
    report = _run(run_dir, data_root, settings={**settings, "distill.vocabulary_top_k": 3})
    assert set(report.ran) == {"distill@seed1", "evaluate@seed1", "report"}
    # a run without a vocabulary has no such stage, and its text features kept their fingerprint
    assert _manifest(run_dir, "text-features-seed1")["fingerprint"] == _manifest(src, "text-features-seed1")["fingerprint"]


def test_best_val_records_its_epoch_and_the_report_names_the_rule_and_the_gate(finished, tmp_path):
    from kdpipe.io import read_json

    src, data_root = finished
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    report = _run(run_dir, data_root, settings={"distill.select": "best_val"})
    assert set(report.ran) == {"distill@seed1", "evaluate@seed1", "report"}
    metrics = _manifest(run_dir, "distill-seed1")["metrics"]
    epochs = SETTINGS["distill.epochs"]
    assert metrics["select"] == "best_val" and 1 <= metrics["selected_epoch"] <= epochs
    assert sorted(metrics["epoch_scores"]) == [str(e) for e in range(1, epochs + 1)]
    assert metrics["selected_score"] == max(metrics["epoch_scores"].values())
    notes = read_json(run_dir / "evaluate-seed1" / "metrics.json")["notes"]
    assert any("distill.select = best_val" in n for n in notes)
    gate = next(n for n in notes if "teacher gate" in n)
    assert f"{metrics['gate_teacher_base']:.1f}%" in gate and f"{metrics['gate_student_zeroshot_base']:.1f}%" in gate
    last = read_json(src / "evaluate-seed1" / "metrics.json")["notes"]
    assert any("distill.select = last" in n for n in last)


def test_the_gate_stops_a_weak_teacher_in_one_line_unless_allowed(finished, tmp_path, monkeypatch):
    from kdpipe.distill.heldout import HeldoutScorer
    from kdpipe.errors import KdpipeError

    _, data_root = finished
    real_gate = HeldoutScorer.gate
    # a teacher right on no image, against the student's real zero-shot
    monkeypatch.setattr(HeldoutScorer, "gate", lambda self, *args: (0.0, real_gate(self, *args)[1]))
    with pytest.raises(KdpipeError) as e:
        _run(tmp_path / "weak", data_root, settings={"distill.allow_weak_teacher": False})
    assert "\n" not in str(e.value) and "teacher gate: the teacher's base accuracy 0.0%" in str(e.value)
    assert "distill.allow_weak_teacher = true" in str(e.value)
    report = _run(tmp_path / "weak", data_root, settings={"distill.allow_weak_teacher": True})
    assert "distill@seed1" in report.ran
    assert _manifest(tmp_path / "weak", "distill-seed1")["metrics"]["gate"] == "overridden"
