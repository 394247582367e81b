"""`kdpipe run all` on tiny backbones and a fake CoOp-layout dataset, two seeds, on CPU.

One module-scoped run feeds most tests (it takes well under a minute); the resume test copies its
run directory and distils again with a simulated kill.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_pipeline_fakedata import make_fake_pets

SEEDS = (1, 2)
SETTINGS = {
    "data.shots": 4,
    "data.workers": 0,
    "teacher.promptsrc.epochs": 2,
    "baselines.methods": "zeroshot,coop",
    "baselines.coop.epochs": 2,
    "distill.epochs": 6,
    "distill.lr": 0.001,  # the reference 0.005 x weight 1000 overshoots on random-init tiny CLIPs
    "distill.workers": 0,
    "distill.allow_weak_teacher": True,  # tiny random-init CLIPs: the teacher gate would judge noise
    "distill.checkpoint_every": 2,
    "shards.per_shard": 16,
    "shards.holdout_fraction": 0.3,
}


def kdpipe_run(run_dir: Path, data_root: Path, *extra: str):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    args = ["run", *extra, "--run-dir", str(run_dir), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
            "--dataset", "oxford_pets", "--data-root", str(data_root), "--seeds", ",".join(map(str, SEEDS))]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run everything once, counting prompted-text-encoder calls per stage, and per (stage, text width)
    (the teacher's and the student's text towers differ in width, which tells whose text ran)."""
    import kdpipe.stages  # noqa: F401  (register the stages before wrapping them)
    from kdpipe.clip.towers import PromptedText
    from kdpipe.pipeline import GRAPH

    tmp = tmp_path_factory.mktemp("pipeline")
    data_root = make_fake_pets(tmp / "data")
    run_dir = tmp / "run"
    calls: Counter = Counter()
    calls_by_width: Counter = Counter()
    current = ["none"]
    original = PromptedText.forward

    def counting_forward(self, *args, **kwargs):
        calls[current[0]] += 1
        calls_by_width[(current[0], self.clip.transformer.width)] += 1
        return original(self, *args, **kwargs)

    def tagged(name, fn):
        def run(ctx):
            current[0] = name
            try:
                return fn(ctx)
            finally:
                current[0] = "none"

        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PromptedText, "forward", counting_forward)
        for name in ("distill", "text-features", "teacher", "evaluate"):
            mp.setitem(GRAPH.specs, name, dataclasses.replace(GRAPH.specs[name], fn=tagged(name, GRAPH.specs[name].fn)))
        result = kdpipe_run(run_dir, data_root, "all")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return SimpleNamespace(run_dir=run_dir, data_root=data_root, calls=calls, calls_by_width=calls_by_width, output=result.output)


def test_run_all_writes_every_stage_output(pipeline):
    rd = pipeline.run_dir
    expected = {"shards": ["shards.json", "unlabeled/manifest.json", "holdout/manifest.json"], "report": [
        "results.md", "results.csv", "metrics.json", "base_novel_hm.png", "distill_curves.png"]}
    for s in SEEDS:
        expected[f"teacher-promptsrc-seed{s}"] = ["teacher.safetensors", "teacher.json"]
        expected[f"text-features-seed{s}"] = ["text_features.safetensors", "classes.index", "classes.index.json"]
        expected[f"distill-seed{s}"] = ["student.safetensors", "student.json", "curves.json"]
        expected[f"baseline-zeroshot-seed{s}"] = ["method.safetensors"]
        expected[f"baseline-coop-seed{s}"] = ["method.safetensors"]
        expected[f"evaluate-seed{s}"] = ["metrics.json"]
    for folder, files in expected.items():
        assert (rd / folder / "manifest.json").is_file(), f"{folder} has no manifest"
        for f in files:
            assert (rd / folder / f).is_file(), f"{folder}/{f} missing"
    for png in ("base_novel_hm.png", "distill_curves.png"):
        assert (rd / "report" / png).read_bytes()[:4] == b"\x89PNG"
    shards = json.loads((rd / "shards" / "shards.json").read_text())
    assert shards["transductive"] and shards["images"] + 21 == 6 * 12  # 30% of 72 held out


def test_report_has_per_seed_rows_and_their_mean(pipeline):
    rows = json.loads((pipeline.run_dir / "report" / "metrics.json").read_text())["rows"]
    student = {r["seed"]: r for r in rows if r["role"] == "student"}
    assert set(student) == {1, 2, "mean"}
    assert student["mean"]["base"] == pytest.approx((student[1]["base"] + student[2]["base"]) / 2)
    b, n = student["mean"]["base"], student["mean"]["novel"]
    assert student["mean"]["hm"] == pytest.approx(2 * b * n / (b + n))
    roles = {(r["method"], r["role"]) for r in rows}
    assert roles == {("promptsrc", "teacher"), ("promptkd", "student"), ("zeroshot", "baseline"), ("coop", "baseline")}
    for r in rows:
        assert r["dataset"] == "oxford_pets" and 0 <= r["base"] <= 100 and 0 <= r["novel"] <= 100
    md = (pipeline.run_dir / "report" / "results.md").read_text()
    assert "| promptkd | student | kd-tiny-s | oxford_pets | 1 |" in md
    assert "unlabeled train images of ALL classes" in md
    assert "](base_novel_hm.png)" in md and "](distill_curves.png)" in md
    evaluate = json.loads((pipeline.run_dir / "evaluate-seed1" / "metrics.json").read_text())
    assert evaluate["notes"] and evaluate["base_classes"] == 3 and evaluate["classes"] == 6


def test_distill_never_calls_the_teacher_text_encoder(pipeline):
    from kdpipe.clip import load_backbone

    teacher_width = load_backbone("kd-tiny-t").dims.text_width
    # the counter works: the text-features stage runs the teacher's text side (once per seed)
    assert pipeline.calls["text-features"] >= len(SEEDS)
    assert pipeline.calls["teacher"] > 0
    # the teacher gate encodes the base class names once with the student's own CLIP (its zero-shot
    # start); the teacher's text side never runs in distill
    assert pipeline.calls_by_width[("distill", teacher_width)] == 0
    assert pipeline.calls["distill"] == pipeline.calls_by_width[("distill", load_backbone("kd-tiny-s").dims.text_width)]


def test_evaluate_scores_the_teacher_with_stored_class_features(pipeline):
    from kdpipe.clip import load_backbone

    teacher_width = load_backbone("kd-tiny-t").dims.text_width
    assert teacher_width != load_backbone("kd-tiny-s").dims.text_width  # the baselines' text runs on the student's
    assert pipeline.calls_by_width[("text-features", teacher_width)] >= len(SEEDS)  # the counter sees the teacher
    # the baselines (CoOp, zero-shot) still encode their own class names in evaluate; the teacher never
    assert pipeline.calls["evaluate"] > 0
    assert pipeline.calls_by_width[("evaluate", teacher_width)] == 0


def test_student_is_scored_against_stored_class_features(pipeline):
    from kdpipe.data import ImageDataset, load_dataset
    from kdpipe.data.transforms import transform_for
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.methods.io import load_method

    rd = pipeline.run_dir
    tf = read_class_features(rd / "text-features-seed1" / "text_features.safetensors")
    assert tf.num_base == math.ceil(6 / 2) and tf.classnames[:3] == ["red fox", "green frog", "blue jay"]
    student, _ = load_method(rd / "distill-seed1" / "student")
    test = load_dataset("oxford_pets", pipeline.data_root).test
    data = ImageDataset(test, transform_for(student.backbone, train=False))
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([it.label for it in test])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(student.encode_images(images), dim=-1)
        logits = float(student.clip.logit_scale) * feats @ tf.features.t()
    base, novel = labels < 3, labels >= 3
    base_acc = 100 * (logits[base][:, :3].argmax(1) == labels[base]).float().mean().item()
    novel_acc = 100 * (logits[novel][:, 3:].argmax(1) == labels[novel] - 3).float().mean().item()
    rows = json.loads((rd / "evaluate-seed1" / "metrics.json").read_text())["rows"]
    row = next(r for r in rows if r["role"] == "student")
    assert row["base"] == pytest.approx(base_acc, abs=1e-3)
    assert row["novel"] == pytest.approx(novel_acc, abs=1e-3)


def test_distillation_raises_student_teacher_agreement(pipeline):
    for s in SEEDS:
        curve = json.loads((pipeline.run_dir / f"distill-seed{s}" / "curves.json").read_text())["curve"]
        assert curve[0]["epoch"] == 0 and curve[-1]["epoch"] == SETTINGS["distill.epochs"]
        assert curve[-1]["agreement"] > curve[0]["agreement"]
        assert curve[-1]["kd_loss"] < curve[0]["kd_loss"]
        # the held-out count, which the report's agreement plot names
        held_out = 6 * 12 - json.loads((pipeline.run_dir / "shards" / "shards.json").read_text())["images"]
        assert curve[0]["images"] == curve[-1]["images"] == held_out


def test_distill_killed_and_resumed_matches_uninterrupted(pipeline, tmp_path, monkeypatch):
    from kdpipe.distill.step import DistillStep
    from kdpipe.methods import read_learned

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline.run_dir, run_dir)
    shutil.rmtree(run_dir / "distill-seed1")
    original = DistillStep.__call__
    steps = [0]

    def killed_at_step_10(self, batch):
        steps[0] += 1
        if steps[0] == 10:  # after the checkpoint at step 8, in the second epoch
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(DistillStep, "__call__", killed_at_step_10)
    killed = kdpipe_run(run_dir, pipeline.data_root, "distill@seed1")
    assert killed.exit_code != 0 and steps[0] == 10, killed.output
    last = json.loads((run_dir / "distill-seed1" / "ckpt" / "last.json").read_text())
    assert last["step"] == 8 and not (run_dir / "distill-seed1" / "manifest.json").exists(), killed.output

    resumed_steps = [0]

    def counted(self, batch):
        resumed_steps[0] += 1
        return original(self, batch)

    monkeypatch.setattr(DistillStep, "__call__", counted)
    resumed = kdpipe_run(run_dir, pipeline.data_root, "distill@seed1")
    assert resumed.exit_code == 0, f"{resumed.output}\n{resumed.exception!r}"
    history = json.loads((pipeline.run_dir / "distill-seed1" / "curves.json").read_text())["history"]
    assert resumed_steps[0] == sum(h["steps"] for h in history) - 8  # picked up after the checkpoint
    got, _ = read_learned(run_dir / "distill-seed1" / "student.safetensors")
    want, _ = read_learned(pipeline.run_dir / "distill-seed1" / "student.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    curve = lambda d: json.loads((d / "distill-seed1" / "curves.json").read_text())["curve"]  # noqa: E731
    assert curve(run_dir) == curve(pipeline.run_dir)


def test_changing_the_crop_scale_retrains_what_it_augments(pipeline):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    args = ["status", "--run-dir", str(pipeline.run_dir), "--set", "data.crop_scale=[0.5,1.0]"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    for name in ("teacher:promptsrc@seed1", "baseline:coop@seed2", "distill@seed1"):
        assert "stale" in lines[name] and "data.crop_scale" in lines[name], lines[name]
    assert lines["shards"].split()[1] == "done"  # the unlabeled shards are stored unaugmented
