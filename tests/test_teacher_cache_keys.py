"""The teacher cache identifies an image by its shard and key: user shard sets written separately
share member keys (every ``kdpipe shards write`` set starts at ``00000000``), and with
``distill.cache_views > 0`` each image must still train against its own teacher feature."""

from __future__ import annotations

import pytest
import torch

from test_pipeline_fakedata import make_fake_pets


def test_cached_teacher_feature_is_each_images_own_when_shard_sets_share_keys(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app
    from kdpipe.clip import load_backbone
    from kdpipe.data import load_dataset
    from kdpipe.data.shards import write_shards
    from kdpipe.distill import ForwardTeacher
    from kdpipe.distill.step import DistillStep
    from kdpipe.methods.io import load_method
    from kdpipe.distill.teacher_source import teacher_input

    root = make_fake_pets(tmp_path / "data")
    items = load_dataset("oxford_pets", root).train
    half = len(items) // 2
    # two sets with the same member keys (00000000, 00000001, ...) but different images
    write_shards(items[:half], tmp_path / "mine" / "a", per_shard=8, keep_labels=False, max_side=0)
    write_shards(items[half:], tmp_path / "mine" / "b", per_shard=8, keep_labels=False, max_side=0)

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (images, the teacher features the step trained on)
    step_call = DistillStep.__call__

    def recording_step(self, batch):
        with torch.no_grad():
            seen.append((batch[0].clone(), self.teacher(batch[0], batch[1]).cpu()))
        return step_call(self, batch)

    sets = {"data.shots": 4, "data.workers": 0, "teacher.promptsrc.epochs": 1, "baselines.methods": "zeroshot",
            "distill.epochs": 1, "distill.batch_size": 8, "distill.workers": 0, "distill.cache_views": 1, "distill.allow_weak_teacher": True,
            "shards.unlabeled": f"{tmp_path / 'mine'}/{{a,b}}", "shards.holdout": 3}
    args = ["run", "distill", "--with-deps", "--run-dir", str(tmp_path / "run"), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
            "--dataset", "oxford_pets", "--data-root", str(root)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistillStep, "__call__", recording_step)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert sum(len(images) for images, _ in seen) >= len(items) - 3 - 8  # both sets trained on

    teacher, _ = load_method(tmp_path / "run" / "teacher-promptsrc-seed1" / "teacher")
    forward = ForwardTeacher(teacher, adapt=teacher_input(teacher.backbone, load_backbone("kd-tiny-s")))
    for images, cached in seen:
        assert torch.allclose(cached, forward(images, []), atol=2e-3)


def test_a_cache_keyed_by_bare_keys_is_refused_in_one_line(tmp_path):
    from kdpipe.artefacts.teacher_cache import FEATURES, KEYS
    from kdpipe.distill.teacher_cache import CachedTeacher
    from kdpipe.errors import KdpipeError
    from kdpipe.io import write_json, write_tensors

    write_tensors(tmp_path / FEATURES, {"features": torch.zeros(1, 2, 4, dtype=torch.float16)}, {"views": 1, "seed": 1})
    write_json(tmp_path / KEYS, {"keys": ["00000000", "00000001"]})  # written before images were keyed by shard
    with pytest.raises(KdpipeError, match="re-run teacher-cache") as e:
        CachedTeacher.load(tmp_path)
    assert "\n" not in str(e.value)
