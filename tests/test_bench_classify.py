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
    assert res["files_ratio"] == res["baseline_s"] / res["files_s"]
    assert res["shards_ratio"] == res["baseline_s"] / res["shards_s"]
    assert f"= {res['files_ratio']:.2f}x the model alone" in result.output


def test_bench_classify_refuses_impossible_sizes():
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["bench", "classify", "--backbone", "kd-tiny-s", "--classes", "2", "--top-k", "5"])
    assert result.exit_code != 0
