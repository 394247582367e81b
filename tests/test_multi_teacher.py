"""Several teachers (``teacher.members``) on tiny backbones and the fake pets dataset, CPU, one seed.

A one-member list is the single-teacher run (same student weights, same fingerprints); adding a
second teacher (zero-shot, on another backbone: another embedding space) to a finished run re-runs
that teacher's stages and what reads all teachers (distill, evaluate, report), never the first one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from test_pipeline_fakedata import make_fake_pets

SETTINGS = {
    "run.seed": 1,
    "run.device": "cpu",
    "teacher.backbone": "kd-tiny-t",
    "student.backbone": "kd-tiny-s",
    "data.dataset": "oxford_pets",
    "data.shots": 4,
    "data.workers": 0,
    "teacher.promptsrc.epochs": 1,
    "baselines.methods": "zeroshot",
    "distill.epochs": 2,
    "distill.lr": 0.001,
    "distill.workers": 0,
    "distill.allow_weak_teacher": True,  # tiny random-init CLIPs: the teacher gate would judge noise
    "distill.cache_views": 1,  # each teacher gets its own teacher-cache instance
    "shards.per_shard": 16,
    "shards.holdout_fraction": 0.3,
}
SECOND = {"teacher.members": "promptsrc,zeroshot", "teacher.zeroshot.backbone": "kd-tiny-s"}


def _run(run_dir: Path, data_root: Path, target: str = "all", **extra):
    from kdpipe import api

    settings = {**SETTINGS, "data.root": str(data_root), **extra.pop("settings", {})}
    return api.run(target, run_dir=run_dir, settings=settings, **extra)


def _student(run_dir: Path) -> dict[str, torch.Tensor]:
    from kdpipe.io import read_tensors

    return read_tensors(run_dir / "distill-seed1" / "student.safetensors")[0]


def _fingerprint(run_dir: Path, folder: str) -> str:
    from kdpipe.pipeline import read_manifest

    return read_manifest(run_dir / folder)["fingerprint"]


@pytest.fixture(scope="module")
def one_teacher(tmp_path_factory):
    """A finished single-teacher run (today's config: no teacher.members)."""
    tmp = tmp_path_factory.mktemp("multi_teacher")
    data_root = make_fake_pets(tmp / "data")
    run_dir = tmp / "run"
    report = _run(run_dir, data_root)
    assert "report" in report.ran
    return run_dir, data_root


def test_a_one_member_list_is_the_single_teacher_run(one_teacher, tmp_path):
    run_dir, data_root = one_teacher
    other = tmp_path / "one-member"
    report = _run(other, data_root, "distill", with_deps=True, only=True, settings={"teacher.members": "promptsrc"})
    assert {"teacher:promptsrc@seed1", "text-features@seed1", "teacher-cache@seed1", "distill@seed1"} <= set(report.ran)
    old, new = _student(run_dir), _student(other)
    assert old.keys() == new.keys()
    for name in old:
        assert torch.equal(old[name], new[name]), name
    for folder in ("teacher-promptsrc-seed1", "text-features-seed1", "teacher-cache-seed1", "distill-seed1"):
        assert _fingerprint(run_dir, folder) == _fingerprint(other, folder), folder


def test_adding_a_teacher_reruns_only_what_depends_on_it(one_teacher, tmp_path):
    from kdpipe.io import read_json
    from kdpipe.pipeline import read_manifest

    src, data_root = one_teacher
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    report = _run(run_dir, data_root, settings=SECOND)
    assert set(report.ran) == {
        "teacher:zeroshot@seed1", "text-features:zeroshot@seed1", "teacher-cache:zeroshot@seed1",
        "distill@seed1", "evaluate@seed1", "report",
    }
    # the second teacher's own class features, in its own (kd-tiny-s) embedding space
    from kdpipe.artefacts.class_features import read_class_features

    primary = read_class_features(run_dir / "text-features-seed1" / "text_features.safetensors")
    second = read_class_features(run_dir / "text-features-zeroshot-seed1" / "text_features.safetensors")
    assert primary.classnames == second.classnames
    assert primary.features.shape[1] != second.features.shape[1]
    metrics = read_manifest(run_dir / "distill-seed1")["metrics"]
    assert metrics["ensemble"] == "mean"
    assert metrics["teacher_weights"] == pytest.approx({"promptsrc": 0.5, "zeroshot": 0.5})
    meta = read_json(run_dir / "distill-seed1" / "student.json")
    assert meta["ensemble"] == "mean" and len(meta["teachers"]) == 2
    # the student's classifier (and so its projector) stays in the primary teacher's space
    assert meta["config"]["teacher_dim"] == primary.features.shape[1]
    # classify --stage teacher, and the student's text side for new class names, are the primary's
    from kdpipe.infer.runs import load_run

    assert load_run(run_dir, "teacher").method.name == "promptsrc"
    assert load_run(run_dir, "student").teacher_loader().name == "promptsrc"

    # confidence weighting: only the distillation and what follows it re-run
    report = _run(run_dir, data_root, settings={**SECOND, "teacher.ensemble": "confidence"})
    assert set(report.ran) == {"distill@seed1", "evaluate@seed1", "report"}
    weights = read_manifest(run_dir / "distill-seed1")["metrics"]["teacher_weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["promptsrc"] != pytest.approx(0.5)


def test_a_teacher_listed_twice_or_unknown_is_refused(one_teacher, tmp_path):
    from kdpipe.errors import KdpipeError

    _, data_root = one_teacher
    with pytest.raises(KdpipeError, match="lists a teacher twice"):
        _run(tmp_path / "twice", data_root, settings={"teacher.members": "promptsrc,promptsrc"})
    with pytest.raises(KdpipeError, match="teacher.members: unknown method"):
        _run(tmp_path / "unknown", data_root, settings={"teacher.members": "promptsrc,nosuch"})


def test_two_teachers_of_one_method_are_named_by_id(one_teacher, tmp_path):
    """A second PromptSRC teacher on another backbone: its id (``promptsrc-b``) names its stages and
    folders and its member table, and the student distils from both."""
    from kdpipe.pipeline import read_manifest

    src, data_root = one_teacher
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    same_method = {"teacher.members": "promptsrc,promptsrc-b", "teacher.promptsrc-b.backbone": "kd-tiny-s",
                   "teacher.promptsrc-b.epochs": 1}
    report = _run(run_dir, data_root, settings=same_method)
    assert set(report.ran) == {
        "teacher:promptsrc-b@seed1", "text-features:promptsrc-b@seed1", "teacher-cache:promptsrc-b@seed1",
        "distill@seed1", "evaluate@seed1", "report",
    }
    second = read_manifest(run_dir / "teacher-promptsrc-b-seed1")
    assert second["config"]["teacher.promptsrc-b"]["backbone"] == "kd-tiny-s"
    from kdpipe.methods.io import load_method

    _, meta = load_method(run_dir / "teacher-promptsrc-b-seed1" / "teacher")
    assert meta["method"] == "promptsrc" and meta["backbone"] == "kd-tiny-s"
    weights = read_manifest(run_dir / "distill-seed1")["metrics"]["teacher_weights"]
    assert weights == pytest.approx({"promptsrc": 0.5, "promptsrc-b": 0.5})
    from kdpipe.errors import KdpipeError

    with pytest.raises(KdpipeError, match="two teachers of one method need ids of their own"):
        _run(tmp_path / "twice", data_root, settings={"teacher.members": "promptsrc,promptsrc"})
    with pytest.raises(KdpipeError, match="bad teacher id 'promptsrc-b 2'"):
        _run(tmp_path / "bad", data_root, settings={"teacher.members": "promptsrc,promptsrc-b 2"})
