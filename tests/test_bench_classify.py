"""``kdpipe bench classify`` measures complete runs and reports ratios of the times it measured."""

import json


def test_bench_classify_runs_every_image_and_reports_consistent_ratios(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "classify", "--backbone", "kd-tiny-s", "--images", "6", "--classes", "4", "--top-k", "3",
                                      "--batch-size", "4", "--workers", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["rows"] == {"files": 6, "shards": 6}  # both end-to-end runs classified every image
    assert set(res["stages_s"]) == {"decode", "preprocess", "model", "search", "write"}
    assert res["files_ratio"] > 0 and res["shards_ratio"] > 0
    assert f"= {res['files_ratio']:.2f}x the model alone" in result.output


def test_classify_ratios_are_model_time_over_classify_time():
    """Known times in, known ratios out: above 1 means classify beat the model alone."""
    from kdpipe.infer.bench_classify import ClassifyBench, summary_lines

    res = ClassifyBench(images=100, classes=10, batch=4, workers=0, device="cpu", torch_threads=1, baseline_s=10.0,
                        files_s=20.0, shards_s=8.0, stages_s={"decode": 1.0, "preprocess": 1.0, "model": 8.0, "search": 0.0, "write": 0.0},
                        rows={"files": 100, "shards": 100})
    assert (res.files_ratio, res.shards_ratio) == (0.5, 1.25)
    lines = summary_lines(res)
    assert lines[1].endswith("(5.0 img/s) = 0.50x the model alone")
    assert lines[2].endswith("(12.5 img/s) = 1.25x the model alone")


def test_bench_classify_refuses_impossible_sizes():
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["bench", "classify", "--backbone", "kd-tiny-s", "--classes", "2", "--top-k", "5"])
    assert result.exit_code != 0


def test_bench_precisions_times_each_precision_and_its_agreement_with_fp32(tmp_path):
    """``--precision``: each precision's times, compile note and agreement on the photos; fp32 is
    open_clip's encode_image itself, so it agrees with the baseline to rounding."""
    from typer.testing import CliRunner

    from kdpipe.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "classify", "--backbone", "kd-tiny-s", "--precision", "fp32,bf16", "--no-world",
                                      "--no-end-to-end", "--precision-images", "6", "--batch-size", "4", "--classes", "4",
                                      "--top-k", "3", "--rounds", "2", "--no-compile", "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())["precision"]
    assert res["images"] == 6 and set(res["times_s"]) == {"fp32", "bf16"} and all(len(t) == 2 for t in res["times_s"].values())
    assert res["compiled"] == {"fp32": "eager: turned off (--no-compile)", "bf16": "eager: turned off (--no-compile)"}
    top1, dprob = res["photos"]["fp32"]
    assert top1 == 1.0 and dprob < 1e-6
    assert 0.0 <= res["photos"]["bf16"][0] <= 1.0 and res["world"] == {}
    assert "demo world: not measured" in result.output
