"""Precision through bundles and classify: the bundle's default round-trips, outputs record what ran."""

import json

import pytest
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.clip import load_backbone
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import export_bundle, load_bundle
from kdpipe.infer.precision import resolve
from kdpipe.infer.writers import meta_path, read_rows
from test_classify import write_images
from test_classify_bundle import make_model, run


@pytest.fixture()
def fresh_model():
    # its own backbones: preparing a precision changes the tower in place (never the session's)
    return make_model(load_backbone("kd-tiny-s"), load_backbone("kd-tiny-t"))


def test_bundle_round_trips_its_default_precision(tmp_path, fresh_model):
    export_bundle(fresh_model, tmp_path / "b", precision="bf16")
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["precision"] == "bf16"
    loaded = load_bundle(tmp_path / "b")
    assert (loaded.precision, loaded.default_precision) == ("fp32", "bf16")  # the library loads exact fp32
    assert load_bundle(tmp_path / "b", precision="int8").precision == "int8"
    assert load_bundle(tmp_path / "b", precision="auto").precision == resolve("auto", "cpu")  # bf16 on a CPU with bf16 instructions
    export_bundle(fresh_model, tmp_path / "plain")
    assert load_bundle(tmp_path / "plain").default_precision == "auto"


def test_export_and_load_refuse_unknown_precisions(tmp_path, fresh_model):
    with pytest.raises(KdpipeError, match="unknown precision"):
        export_bundle(fresh_model, tmp_path / "b", precision="fp8")
    assert not (tmp_path / "b").exists()
    export_bundle(fresh_model, tmp_path / "b")
    with pytest.raises(KdpipeError, match="int8 does not run on cuda"):
        load_bundle(tmp_path / "b", device="cuda", precision="int8")
    info = json.loads((tmp_path / "b" / "bundle.json").read_text())
    (tmp_path / "b" / "bundle.json").write_text(json.dumps({**info, "precision": "fp4"}))
    with pytest.raises(KdpipeError, match="bundle.json: precision 'fp4'"):
        load_bundle(tmp_path / "b")


def test_classify_records_the_precision_and_refuses_to_mix_precisions(tmp_path, fresh_model):
    write_images(tmp_path / "imgs", 5)
    s = run(fresh_model, tmp_path / "imgs", tmp_path / "fp32.jsonl")
    assert s.precision == "fp32" and json.loads(meta_path(tmp_path / "fp32.jsonl").read_text())["precision"] == "fp32"
    fresh_model.set_precision("int8")
    s = run(fresh_model, tmp_path / "imgs", tmp_path / "int8.jsonl")
    assert s.precision == "int8" and "int8" in s.lines()[0]
    assert json.loads(meta_path(tmp_path / "int8.jsonl").read_text())["precision"] == "int8"
    assert len(read_rows(tmp_path / "int8.jsonl")) == 5
    with pytest.raises(KdpipeError, match="another model"):  # int8 rows never resume an fp32 output
        run(fresh_model, tmp_path / "imgs", tmp_path / "fp32.jsonl")
    with pytest.raises(KdpipeError, match="runs in int8 already"):
        fresh_model.set_precision("bf16")


def _cli(args):
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output + str(res.exception or "")


def test_cli_classify_uses_the_bundles_default_unless_told(tmp_path, fresh_model):
    write_images(tmp_path / "imgs", 4)
    export_bundle(fresh_model, tmp_path / "b", precision="bf16")
    base = ["classify", "--model", str(tmp_path / "b"), "--input", str(tmp_path / "imgs"), "--workers", "0", "--device", "cpu"]
    code, out = _cli(base + ["--out", str(tmp_path / "default.jsonl")])
    assert code == 0, out
    assert json.loads(meta_path(tmp_path / "default.jsonl").read_text())["precision"] == "bf16"
    code, out = _cli(base + ["--out", str(tmp_path / "exact.jsonl"), "--precision", "fp32"])
    assert code == 0, out
    assert json.loads(meta_path(tmp_path / "exact.jsonl").read_text())["precision"] == "fp32"
    code, out = _cli(base + ["--out", str(tmp_path / "bad.jsonl"), "--precision", "half"])
    assert code != 0 and "--precision 'half': unknown precision" in out and not (tmp_path / "bad.jsonl").exists()
