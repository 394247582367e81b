import os
import subprocess
import sys
import time

import pytest
import torch

from kdpipe.clip import load_backbone, save_backbone
from kdpipe.errors import KdpipeError


def test_tiny_configs_registered(tiny_student, tiny_teacher):
    assert tiny_student.dims.embed_dim == 32 and tiny_teacher.dims.embed_dim == 48
    assert tiny_student.dims.image_size == 32
    assert tiny_student.tokenizer(["a red circle"]).shape == (1, tiny_student.dims.context_length)


def test_unknown_spec_lists_known_names():
    with pytest.raises(KdpipeError) as e:
        load_backbone("vit-b-17")
    msg = str(e.value)
    assert "unknown model" in msg and "vit-b-16" in msg and "\n" not in msg


def test_unknown_tag_lists_tags():
    with pytest.raises(KdpipeError, match="known tags: .*openai"):
        load_backbone("ViT-B-16:nope")


def test_missing_weights_offline_fail_fast_with_one_line():
    t = time.perf_counter()
    with pytest.raises(KdpipeError) as e:
        load_backbone("vit-l-14")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "ViT-L-14-quickgelu:openai" in msg and "ViT-L-14-quickgelu:/path" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg


def test_missing_weights_cli_one_line_nonzero():
    # a throwaway command that loads real weights, run through cli.main's error path
    script = (
        "import sys\n"
        "from kdpipe.cli import app, main\n"
        "@app.command('load-test')\n"
        "def _load():\n"
        "    from kdpipe.clip import load_backbone\n"
        "    load_backbone('vit-b-16')\n"
        "sys.argv = ['kdpipe', 'load-test']\n"
        "main()\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: weights for ViT-B-16-quickgelu:openai not found")
    assert "Traceback" not in proc.stderr


def test_checkpoint_round_trip_through_path_spec(tmp_path, tiny_student):
    path = save_backbone(tiny_student.model, "kd-tiny-s", tmp_path / "w.safetensors")
    img = torch.randn(2, 3, 32, 32)
    tok = tiny_student.tokenizer(["a red circle", "a blue square"])
    for spec in (str(path), f"kd-tiny-s:{path}"):
        b = load_backbone(spec)
        assert torch.equal(b.model.encode_image(img), tiny_student.model.encode_image(img))
        assert torch.equal(b.model.encode_text(tok), tiny_student.model.encode_text(tok))


def test_missing_checkpoint_file_is_one_line(tmp_path):
    with pytest.raises(KdpipeError, match="does not exist"):
        load_backbone(f"kd-tiny-s:{tmp_path / 'nope.pt'}")
    with pytest.raises(KdpipeError, match="does not exist"):
        load_backbone(str(tmp_path / "nope.safetensors"))


def test_backbone_is_frozen_fp32_eval(tiny_student):
    m = tiny_student.model
    assert not m.training
    assert all(not p.requires_grad for p in m.parameters())
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_random_init_is_the_same_model_on_every_load():
    # stages reload backbones (evaluate, classify): a random-init spec must give the same weights
    torch.manual_seed(1)
    a = load_backbone("kd-tiny-s").model.state_dict()
    torch.manual_seed(2)
    before = torch.rand(1)
    torch.manual_seed(2)
    b = load_backbone("kd-tiny-s").model.state_dict()
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_demo_world_checkpoint_loads_in_a_fresh_process(tmp_path):
    # a saved world-b checkpoint must load without anyone importing kdpipe.world first
    import subprocess
    import sys

    from kdpipe.clip.backbones import BUILTIN_CONFIG_DIRS

    assert any((d / "world-b.json").is_file() for d in BUILTIN_CONFIG_DIRS)
    path = tmp_path / "world-b.safetensors"
    save_backbone(load_backbone("world-b").model, "world-b", path)
    code = f"from kdpipe.clip import load_backbone; print(load_backbone({str(path)!r}).arch)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "world-b"
