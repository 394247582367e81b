"""The optional teacher cache: the teacher-cache stage stores the teacher's features for V views,
and distill then trains without running the teacher's image tower (only the held-out probe does)."""

from __future__ import annotations

import json

import pytest
import torch

from test_pipeline_fakedata import make_fake_pets


def test_distill_reads_cached_teacher_features(tmp_path):
    from typer.testing import CliRunner

    import kdpipe.stages  # noqa: F401
    from kdpipe.cli import app
    from kdpipe.clip.towers import PromptedVision
    from kdpipe.data.shards import ShardStream
    from kdpipe.data.transforms import build_transform
    from kdpipe.distill import ForwardTeacher
    from kdpipe.distill.step import DistillStep
    from kdpipe.clip import load_backbone
    from kdpipe.io import read_tensors
    from kdpipe.methods.io import load_method

    root = make_fake_pets(tmp_path / "data")
    teacher_width = load_backbone("kd-tiny-t").dims.vision_width
    in_step, teacher_calls = [False], [0]
    vision_forward, step_call = PromptedVision.forward, DistillStep.__call__

    def counting_vision(self, *a, **k):
        if in_step[0] and self.visual.transformer.width == teacher_width:
            teacher_calls[0] += 1
        return vision_forward(self, *a, **k)

    def flagged_step(self, batch):
        in_step[0] = True
        try:
            return step_call(self, batch)
        finally:
            in_step[0] = False

    sets = {"data.shots": 4, "data.workers": 0, "teacher.promptsrc.epochs": 2, "baselines.methods": "zeroshot",
            "distill.epochs": 4, "distill.lr": 0.001, "distill.workers": 0, "distill.cache_views": 2, "distill.allow_weak_teacher": True,
            "shards.holdout_fraction": 0.3}
    args = ["run", "all", "--run-dir", str(tmp_path / "run"), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
            "--dataset", "oxford_pets", "--data-root", str(root)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PromptedVision, "forward", counting_vision)
        mp.setattr(DistillStep, "__call__", flagged_step)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert teacher_calls[0] == 0

    run = tmp_path / "run"
    tensors, meta = read_tensors(run / "teacher-cache-seed1" / "features.safetensors")
    keys = json.loads((run / "teacher-cache-seed1" / "keys.json").read_text())["keys"]
    feats = tensors["features"]
    assert meta["views"] == 2 and feats.shape == (2, len(keys), 48) and feats.dtype == torch.float16

    # view 1 holds the teacher's features of exactly the images distill sees in epochs 1, 3, ...
    teacher, _ = load_method(run / "teacher-promptsrc-seed1" / "teacher")
    student_bb = load_backbone("kd-tiny-s")
    shards = json.loads((run / "shards" / "shards.json").read_text())
    stream = ShardStream(run / "shards" / shards["train"], build_transform(True, 32, student_bb.mean, student_bb.std), seed=1, epoch=1, batch_size=8)
    images, batch_keys = next(iter(stream))
    want = ForwardTeacher(teacher)(images, batch_keys)
    got = feats[1][torch.tensor([keys.index(k) for k in batch_keys])].float()
    assert torch.allclose(got, want, atol=2e-3)
    assert not torch.allclose(feats[0][torch.tensor([keys.index(k) for k in batch_keys])].float(), want, atol=2e-3)

    curve = json.loads((run / "distill-seed1" / "curves.json").read_text())["curve"]
    assert curve[-1]["agreement"] > curve[0]["agreement"]
