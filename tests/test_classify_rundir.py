"""classify and export against a real (tiny) pipeline run: predictions equal evaluate's, bundles are
self-contained, any stage can classify, and the run's teacher gives the student new class names."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.infer.bundle import load_bundle
from kdpipe.infer.classify import classify
from kdpipe.infer.runs import load_model, load_run
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import read_rows
from test_pipeline_fakedata import make_fake_pets


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run on the fake pets with tiny saved backbones (saved, so every reload is the same CLIP)."""
    from kdpipe.clip import load_backbone, save_backbone

    root = tmp_path_factory.mktemp("rundir")
    make_fake_pets(root / "data")
    specs = {}
    for name in ("kd-tiny-s", "kd-tiny-t"):
        torch.manual_seed(0)
        b = load_backbone(name)
        specs[name] = str(save_backbone(b.model, b.arch, root / f"{name}.safetensors"))
    args = ["run", "all", "--run-dir", str(root / "run"), "--teacher", specs["kd-tiny-t"], "--student", specs["kd-tiny-s"],
            "--dataset", "oxford_pets", "--data-root", str(root / "data"),
            "--set", "teacher.epochs=1", "--set", "distill.epochs=1", "--set", 'baselines.methods=["zeroshot"]',
            "--set", "data.shots=1", "--set", "data.workers=0", "--set", "distill.workers=0", "--set", "distill.allow_weak_teacher=true", "--set", "run.device=cpu",
            "--set", "shards.per_shard=50", "--set", "student.depth=1", "--set", "student.n_ctx=1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return root


def classify_dir(cm, folder, out):
    return classify(cm.encoder(), cm.index(), cm.classnames, open_source(folder), out, top_k=3, batch_size=16,
                    workers=0, device="cpu", progress=False)


def test_classify_predictions_equal_evaluate_predictions(run, tmp_path):
    from kdpipe.data import load_dataset
    from kdpipe.eval.scoring import collect_logits, features_scorer

    test_items = load_dataset("oxford_pets", run / "data").test
    (tmp_path / "test.txt").write_text("\n".join(item.path for item in test_items) + "\n")
    student = load_run(run / "run", "student")
    teacher = load_run(run / "run", "teacher")
    # evaluate scores both against the stored class features, as classify does
    for cm, scorer in ((student, features_scorer(student.method, "student", student.class_features)),
                       (teacher, features_scorer(teacher.method, "teacher", teacher.class_features))):
        (logits,), _ = collect_logits([scorer], test_items, batch_size=8, workers=0, device=torch.device("cpu"), amp=False)
        out = tmp_path / f"{cm.method.name}.jsonl"
        classify_dir(cm, tmp_path / "test.txt", out)
        predicted = {r["path"]: r["ids"][0] for r in read_rows(out)}
        assert [predicted[item.path] for item in test_items] == logits.argmax(-1).tolist()


def test_exported_bundle_moved_away_classifies_identically_without_the_run(run, tmp_path):
    res = CliRunner().invoke(app, ["export", "--run-dir", str(run / "run"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    images = run / "data" / "oxford_pets" / "images"
    classify_dir(load_model(run / "run"), images, tmp_path / "from-run.jsonl")
    shutil.move(str(tmp_path / "b"), str(tmp_path / "moved"))
    hidden = run.with_name(run.name + "-hidden")
    shutil.move(str(run), str(hidden))  # neither the run dir nor its backbone files exist now
    try:
        bundle = load_model(tmp_path / "moved")
        classify_dir(bundle, hidden / "data" / "oxford_pets" / "images", tmp_path / "from-bundle.jsonl")
    finally:
        shutil.move(str(hidden), str(run))
    assert read_rows(tmp_path / "from-run.jsonl") == read_rows(tmp_path / "from-bundle.jsonl")


def test_every_stage_can_classify_and_the_runs_teacher_names_new_classes(run, tmp_path):
    images = run / "data" / "oxford_pets" / "images"
    for stage in ("teacher", "baseline:zeroshot"):
        s = classify_dir(load_run(run / "run", stage), images, tmp_path / f"{stage.replace(':', '-')}.jsonl")
        assert s.rows_new == 120
    student = load_run(run / "run", "student")
    opened = student.with_classes(["red fox", "silver wolf"])
    teacher = load_run(run / "run", "teacher").method
    with torch.no_grad():
        expected = F.normalize(teacher.class_features(["red fox", "silver wolf"]).float(), dim=-1)
    assert torch.allclose(opened.class_features, expected, atol=1e-6)
    assert torch.allclose(opened.class_features[0], student.class_features[0], atol=1e-6)  # the stored row, recomputed
    res = CliRunner().invoke(app, ["classify", "--model", str(run / "run"), "--stage", "baseline:coop", "--input", str(images),
                                   "--out", str(tmp_path / "x.jsonl")])
    assert "no finished baseline:coop stage" in str(res.exception)


def test_exported_bundle_with_teacher_text(run, tmp_path):
    res = CliRunner().invoke(app, ["export", "--run-dir", str(run / "run"), "--out", str(tmp_path / "b"), "--with-teacher-text"])
    assert res.exit_code == 0 and "with the teacher text side" in res.output
    opened = load_bundle(tmp_path / "b").with_classes(["silver wolf", "red fox"])
    direct = load_run(run / "run", "student").with_classes(["silver wolf", "red fox"])
    assert torch.equal(opened.class_features, direct.class_features)
