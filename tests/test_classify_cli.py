"""The commands: kdpipe classify with a bundle, its one-line errors, kdpipe bench index."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import export_bundle
from kdpipe.infer.writers import read_rows
from test_classify import CLASSES, write_images
from test_classify_bundle import model  # noqa: F401  (fixture)


def test_classify_command_with_a_bundle_resumes_and_takes_classes(tmp_path, model):  # noqa: F811
    export_bundle(model, tmp_path / "bundle")
    write_images(tmp_path / "imgs", 5)
    args = ["classify", "--model", str(tmp_path / "bundle"), "--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.csv"),
            "--top-k", "2", "--workers", "0", "--device", "cpu", "--batch-size", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "classified 5 images" in res.output and "images/s" in res.output
    rows = read_rows(tmp_path / "o.csv")
    assert len(rows) == 5 and all(r["label_1"] in CLASSES for r in rows)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "classified 0 images" in res.output and "resumed: 5" in res.output
    (tmp_path / "few.txt").write_text("blue\nred\n")
    res = CliRunner().invoke(app, args[:5] + ["--out", str(tmp_path / "few.jsonl"), "--classes", str(tmp_path / "few.txt"), "--workers", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert {lab for r in read_rows(tmp_path / "few.jsonl") for lab in r["labels"]} <= {"blue", "red"}
    # the same --out with other classes is another model's output
    res = CliRunner().invoke(app, args[:5] + ["--out", str(tmp_path / "o.csv"), "--top-k", "2", "--classes", str(tmp_path / "few.txt"), "--device", "cpu"])
    assert isinstance(res.exception, KdpipeError) and "another model" in str(res.exception)


def test_bad_model_paths_are_one_line(tmp_path):
    write_images(tmp_path / "imgs", 1)
    for model_dir, expected in ((tmp_path / "nope", "does not exist"), (tmp_path / "imgs", "neither a bundle")):
        res = CliRunner().invoke(app, ["classify", "--model", str(model_dir), "--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.jsonl")])
        assert isinstance(res.exception, KdpipeError) and expected in str(res.exception)


def test_cli_error_is_one_line_naming_the_input(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdpipe", "classify", "--model", str(tmp_path), "--input", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "o.jsonl")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no images found in {tmp_path / 'empty'} "
                                                "(looked recursively for .bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp, and for .tar shards)"]


def test_bench_index_reports_ratios_measured_in_the_same_run(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "index", "--classes", "40,80", "--approx-classes", "400", "--dim", "8", "--batch", "6",
                                   "--repeats", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "faiss / torch" in res.output and "recall@1" in res.output
    data = json.loads(out.read_text())
    assert [r["classes"] for r in data["flat"]] == [40, 80]
    for r in data["flat"]:
        assert r["identical"] is True and r["picked"] in ("faiss", "torch")
        assert r["faiss_over_torch"] == pytest.approx(r["faiss_ms"] / r["torch_ms"])
    assert [r["kind"] for r in data["approx"]] == ["ivf", "hnsw"]
    assert all(0.0 <= r["recall1"] <= 1.0 and r["build_s"] >= 0 for r in data["approx"])


def test_classify_command_parts_embeddings_and_a_factory_index(tmp_path, model):  # noqa: F811
    from kdpipe.infer.embeddings import read_embeddings

    export_bundle(model, tmp_path / "bundle")
    write_images(tmp_path / "imgs", 5)
    args = ["classify", "--model", str(tmp_path / "bundle"), "--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.parquet"),
            "--top-k", "2", "--workers", "0", "--device", "cpu", "--index", "IVF2,Flat", "--nprobe", "2",
            "--embeddings", str(tmp_path / "emb"), "--parts", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 parts o.part-00000-of-00002.parquet" in res.output
    res = CliRunner().invoke(app, args + ["--merge"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "o.parquet")
    assert len(rows) == 5 and all(len(r["probs"]) == 2 and r["probs"][0] >= r["probs"][1] for r in rows)
    assert sorted(read_embeddings(tmp_path / "emb")[0]) == sorted(r["path"] for r in rows)
    res = CliRunner().invoke(app, args[:-6] + ["--index", "IVF2,Nope"])
    assert isinstance(res.exception, KdpipeError) and "unknown index kind 'IVF2,Nope'" in str(res.exception)
    res = CliRunner().invoke(app, args[:-6] + ["--ef-search", "9"])
    assert isinstance(res.exception, KdpipeError) and "--ef-search applies to HNSW" in str(res.exception)
