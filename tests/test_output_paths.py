"""Output paths a user can mistype: one ``error:`` line and a non-zero exit, never a traceback."""

import os
import subprocess
import sys

import pytest


def kdpipe(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "kdpipe", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def afile(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    return tmp_path / "afile"


@pytest.mark.parametrize("args,expected", [
    (["shards", "write", "imgs", "afile/s4", "--no-labels"], "error: shard folder afile/s4: afile is a file, not a folder"),
    (["export", "--run-dir", "nowhere", "--out", "bundle"], "error: --run-dir nowhere does not exist"),
    (["export", "--run-dir", "imgs", "--out", "afile"], "error: --out afile is a file"),
    (["export", "--run-dir", "imgs", "--out", "afile/b"], "error: the folder of --out afile: afile is a file, not a folder"),
])
def test_a_path_under_a_file_is_one_line(tmp_path, afile, args, expected):
    out = kdpipe(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(expected) and "Traceback" not in out.stderr, out.stderr


def test_classify_out_under_a_file_is_one_line_before_anything_is_written(tmp_path, afile, tiny_student):
    from kdpipe.errors import KdpipeError
    from kdpipe.infer.classify import classify
    from kdpipe.infer.index import ClassIndex
    from kdpipe.infer.sources import open_source
    from test_classify import TinyEncoder

    import torch

    index = ClassIndex.build(torch.nn.functional.normalize(torch.randn(3, 24), dim=-1), "flat")
    with pytest.raises(KdpipeError, match="afile is a file, not a folder") as e:
        classify(TinyEncoder(tiny_student), index, ["a", "b", "c"], open_source(tmp_path / "imgs"), afile / "preds.jsonl",
                 top_k=2, batch_size=4, workers=0, device="cpu", progress=False)
    assert "\n" not in str(e.value)


def test_a_run_dir_under_a_file_is_one_line(tmp_path, afile):
    from test_run_status_cli import kdpipe as toy_kdpipe

    (tmp_path / "toy.toml").write_text("")
    out = toy_kdpipe(tmp_path, "run", "all", "--recipe", "toy.toml", "--run-dir", "afile/run")
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1] == "error: run dir afile/run: afile is a file, not a folder; choose another path", out.stderr
