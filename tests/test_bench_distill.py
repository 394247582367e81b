"""``kdpipe bench distill``: the reference-style tower computes kdpipe's features, and the command
reports every variant and the ratios the issue asks for."""

import json

import torch
from typer.testing import CliRunner

from kdpipe.distill.bench import DistillBench
from kdpipe.distill.reference_tower import reference_vision
from kdpipe.methods import build_method


def test_reference_tower_gives_kdpipe_tower_features(tiny_student):
    student = build_method("promptkd", tiny_student, ["a", "b"], overrides={"teacher_dim": 16})
    with torch.no_grad():
        for p in student.vision_prompts.parameters():
            p.normal_()  # prompts far from zero, so a misplaced prompt would show
        first, deep = student.vision_prompts()
        images = torch.randn(3, 3, tiny_student.dims.image_size, tiny_student.dims.image_size)
        ours = student.clip.vision(images, first, deep)
        ref = reference_vision(tiny_student.model.visual, images, first, deep)
        # without deep prompts the two must differ: the test sees whether deep prompts are applied
        shallow = reference_vision(tiny_student.model.visual, images, first, [])
    torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shallow, ours, atol=1e-3)


def test_reference_extrapolates_only_class_counts_it_did_not_run():
    res = DistillBench("t", "s", 8, 224, "cpu", "fp32", 1, 2, [10, 50],
                       times_s={"reference C=10": [2.0, 2.2], "reference C=50": [3.0, 3.0], "kdpipe": [1.0, 1.0],
                                "kdpipe cached": [0.5, 0.5], "limit": [0.45, 0.45], "reference student": [0.5, 0.5]},
                       text_s_per_class=0.01)
    assert res.reference_at(50) == (3.0, False)
    ref, extrapolated = res.reference_at(1000)
    assert extrapolated and abs(ref - 12.5) < 1e-9  # 3.0 s at C=50, plus 950 classes at 10 ms
    ratios = res.ratios()
    assert abs(ratios["reference / kdpipe at C=50"] - 3.0) < 1e-9
    assert abs(ratios["reference / cached at C=1000 (extrapolated)"] - 25.0) < 1e-9
    assert abs(ratios["limit / cached (>= 0.9 is the goal)"] - 0.9) < 1e-9


def test_bench_distill_command_times_every_variant(tmp_path):
    from kdpipe.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "distill", "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
                                      "--classes", "3,6", "--batch", "2", "--rounds", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert set(res["times_s"]) == {"limit", "reference student", "kdpipe cached", "kdpipe", "reference C=3", "reference C=6"}
    assert all(len(t) == 2 and min(t) > 0 for t in res["times_s"].values())
    assert res["text_s_per_class"] > 0
    assert "reference / kdpipe at C=1000 (extrapolated)" in result.output


def test_bench_distill_refuses_bad_class_lists():
    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["bench", "distill", "--classes", "ten"])
    assert result.exit_code != 0
    assert "--classes 'ten'" in str(result.exception)
