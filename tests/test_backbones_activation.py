"""OpenAI weights build QuickGELU, whatever the spelling; other tags keep their own activation.

No weights are downloaded: a fake Hugging Face cache holds a placeholder file where open_clip looks
for a tag's weights, and open_clip's checkpoint loading is recorded instead of run (a ViT-B's real
weights would be hundreds of MB). What is asserted is the module open_clip actually builds.
"""

import json

import pytest
import torch
from torch import nn

import open_clip
from open_clip.transformer import QuickGELU

from kdpipe.clip import FRIENDLY_NAMES, load_backbone, parse_spec, register_config_dir, save_backbone
from kdpipe.clip.activation import strict_activation
from kdpipe.clip.backbones import built_activation, spec_activation
from kdpipe.errors import KdpipeError


def _activations(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A Hugging Face cache holding a placeholder for every tag asked for; loads are recorded."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: nothing here may reach the hub; the cache below is all there is
    cache = tmp_path / "hf"
    loaded: list[str] = []

    def place(arch: str, tag: str) -> None:
        repo = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].strip("/")
        root = cache / ("models--" + repo.replace("/", "--"))
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text("0" * 40)
        snap = root / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "open_clip_model.safetensors").write_bytes(b"placeholder")

    def record(model, checkpoint_path, *args, **kwargs):
        loaded.append(str(checkpoint_path))
        return None

    monkeypatch.setattr(open_clip.factory, "load_checkpoint", record)
    return cache, place, loaded


def test_friendly_names_and_openai_tags_resolve_to_quickgelu():
    assert set(FRIENDLY_NAMES) >= {"vit-b-16", "vit-b-32", "vit-l-14", "vit-l-14-336"}
    assert parse_spec("vit-b-16") == ("ViT-B-16-quickgelu", "openai")
    assert parse_spec("vit-b-32") == ("ViT-B-32-quickgelu", "openai")
    assert parse_spec("vit-l-14") == ("ViT-L-14-quickgelu", "openai")
    assert parse_spec("vit-l-14-336") == ("ViT-L-14-336-quickgelu", "openai")
    assert parse_spec("ViT-B-16:openai") == ("ViT-B-16-quickgelu", "openai")
    assert parse_spec("ViT-L-14-quickgelu:openai") == ("ViT-L-14-quickgelu", "openai")
    # decided from the tag's own config, not from the word "openai": metaclip was QuickGELU too
    assert parse_spec("ViT-B-32:metaclip_400m") == ("ViT-B-32-quickgelu", "metaclip_400m")
    assert parse_spec("ViT-B-16:laion2b_s34b_b88k") == ("ViT-B-16", "laion2b_s34b_b88k")
    assert parse_spec("ViT-B-16") == ("ViT-B-16", None)  # random init: the architecture as named


@pytest.mark.parametrize("spec,arch,tag", [("vit-b-32", "ViT-B-32", "openai"), ("ViT-B-32:openai", "ViT-B-32", "openai")])
def test_openai_specs_build_quickgelu_modules(fake_hub, spec, arch, tag):
    cache, place, loaded = fake_hub
    place(arch, tag)
    b = load_backbone(spec, cache_dir=str(cache))
    assert loaded and loaded[0].endswith("open_clip_model.safetensors")  # the tag's weights were used
    assert _activations(b.model) == {QuickGELU}
    assert b.arch == "ViT-B-32-quickgelu" and b.activation == "QuickGELU"


def test_gelu_tags_keep_gelu(fake_hub):
    cache, place, loaded = fake_hub
    place("ViT-B-32", "laion2b_s34b_b79k")
    b = load_backbone("ViT-B-32:laion2b_s34b_b79k", cache_dir=str(cache))
    assert loaded
    assert _activations(b.model) == {nn.GELU}
    assert b.arch == "ViT-B-32" and b.activation == "GELU"


def test_asking_for_the_other_activation_is_one_line_naming_the_right_spelling():
    with pytest.raises(KdpipeError) as e:
        load_backbone("ViT-B-16-quickgelu:laion2b_s34b_b88k")
    msg = str(e.value)
    assert "ViT-B-16:laion2b_s34b_b88k" in msg and "GELU" in msg and "\n" not in msg


def test_open_clip_mismatch_warning_is_an_error_not_a_wrong_model(fake_hub):
    # the guard behind the resolution: whatever reaches open_clip with a mismatch is refused
    cache, place, _ = fake_hub
    place("ViT-B-32", "openai")
    with pytest.raises(KdpipeError) as e, strict_activation("ViT-B-32:openai"):
        open_clip.create_model("ViT-B-32", pretrained="openai", cache_dir=str(cache))
    assert "-quickgelu" in str(e.value) and "\n" not in str(e.value)


def _tiny_pair(tmp_path) -> str:
    """A GELU architecture and its -quickgelu sibling, registered like open_clip's own pairs."""
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
    }
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "kdtest-act.json").write_text(json.dumps(cfg))
    (folder / "kdtest-act-quickgelu.json").write_text(json.dumps({**cfg, "quick_gelu": True}))
    register_config_dir(folder)
    return "kdtest-act"


def _openai_style_archive(model: nn.Module, path) -> None:
    """What OpenAI ships: a traced TorchScript module (with input_resolution & co. beside the weights)."""
    model.output_dict = False
    size = model.visual.image_size
    image = torch.randn(1, 3, *(size if isinstance(size, (tuple, list)) else (size, size)))
    text = torch.zeros(1, model.context_length, dtype=torch.long)
    with pytest.warns(FutureWarning):  # torch marks jit as deprecated; OpenAI's files are jit all the same
        traced = torch.jit.trace(model, (image, text), strict=False, check_trace=False)
    traced.save(str(path))


def test_openai_torchscript_file_builds_quickgelu_with_its_weights(tmp_path):
    arch = _tiny_pair(tmp_path)
    source = open_clip.create_model(f"{arch}-quickgelu")
    for p in source.parameters():  # not the name-seeded init kdpipe would build anyway
        nn.init.normal_(p, std=0.05)
    path = tmp_path / "ViT-tiny.pt"
    _openai_style_archive(source, path)

    b = load_backbone(f"{arch}:{path}")
    assert b.arch == f"{arch}-quickgelu" and _activations(b.model) == {QuickGELU}
    image = torch.randn(2, 3, 16, 16)
    source.eval()
    assert torch.allclose(b.model.encode_image(image), source.encode_image(image), atol=1e-6)


def test_plain_state_dict_keeps_the_given_architecture(tmp_path):
    # a state dict cannot say how it was trained: the spelling decides (README names -quickgelu)
    arch = _tiny_pair(tmp_path)
    path = tmp_path / "weights.pt"
    torch.save(open_clip.create_model(arch).state_dict(), path)
    assert built_activation(load_backbone(f"{arch}:{path}").model) == "GELU"
    assert built_activation(load_backbone(f"{arch}-quickgelu:{path}").model) == "QuickGELU"
    # a checkpoint kdpipe saved records the architecture it was built with, activation included
    quick = load_backbone(f"{arch}-quickgelu:{path}")
    saved = save_backbone(quick.model, quick.arch, tmp_path / "saved.safetensors")
    assert load_backbone(str(saved)).activation == "QuickGELU"


def test_torchscript_of_another_architecture_is_one_line(tmp_path):
    arch = _tiny_pair(tmp_path)
    path = tmp_path / "other.pt"
    _openai_style_archive(open_clip.create_model("kd-tiny-s"), path)
    with pytest.raises(KdpipeError, match="does not fit this architecture") as e:
        load_backbone(f"{arch}:{path}")
    assert "\n" not in str(e.value)


def test_spec_activation_without_weights():
    assert spec_activation("vit-l-14") == "QuickGELU"
    assert spec_activation("ViT-B-16:laion2b_s34b_b88k") == "GELU"
    assert spec_activation("kd-tiny-s") == "GELU"


def test_models_command_shows_each_specs_activation():
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "ViT-L-14-quickgelu" in rows["vit-l-14"] and "QuickGELU" in rows["vit-l-14"]
    assert "QuickGELU" in rows["vit-b-16"]
    assert "GELU" in rows["kd-tiny-s"] and "QuickGELU" not in rows["kd-tiny-s"]
