"""Inference precisions of the image tower: SDPA equals MHA, bf16/int8 agree with fp32, the registry's refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F

from kdpipe.clip import FrozenCLIP, load_backbone
from kdpipe.clip.attention import Bf16Block, SdpaAttention, use_sdpa
from kdpipe.clip.towers import PromptedVision
from kdpipe.errors import KdpipeError
from kdpipe.infer import precision
from kdpipe.infer.precision import AUTO, PRECISIONS, cpu_has_bf16, prepare_tower, resolve


def test_sdpa_attention_equals_multihead_attention_in_fp32():
    mha = torch.nn.MultiheadAttention(48, 3, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    x = torch.randn(4, 17, 48)
    mask = torch.triu(torch.full((17, 17), float("-inf")), 1)  # open_clip's additive causal mask
    sdpa = SdpaAttention(mha)
    with torch.no_grad():
        for m in (None, mask):
            want = mha(x, x, x, need_weights=False, attn_mask=m)[0]
            got, _ = sdpa(x, need_weights=False, attn_mask=m)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="additive float"):
        sdpa(x, attn_mask=mask.isinf())


def test_sdpa_tower_matches_open_clip_and_zero_prompts_stay_exact():
    backbone = load_backbone("kd-tiny-s")
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = backbone.model.encode_image(images)
        assert torch.equal(FrozenCLIP(backbone.model).vision(images), want)  # fp32: open_clip's own blocks
        visual = copy.deepcopy(backbone.model.visual)
        assert use_sdpa(visual.transformer) == 3
        torch.testing.assert_close(PromptedVision(visual)(images), want, rtol=1e-5, atol=1e-5)


def _world_like_agreement(name: str) -> float:
    """Top-1 agreement with fp32 of the tiny tower in ``name`` over 64 images and 10 random classes."""
    backbone = load_backbone("kd-tiny-s")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32, generator=gen)
    classes = F.normalize(torch.randn(10, backbone.dims.embed_dim, generator=gen), dim=-1)
    tower = FrozenCLIP(backbone.model).vision
    with torch.no_grad():
        ref = F.normalize(tower(images), dim=-1) @ classes.T
        assert prepare_tower(backbone.model.visual, name, "cpu") == name
        out = tower(images)
        assert out.dtype == torch.float32  # what follows the tower stays fp32
        got = F.normalize(out, dim=-1) @ classes.T
    return (got.argmax(-1) == ref.argmax(-1)).float().mean().item()


@pytest.mark.parametrize("name", ["bf16", "int8"])
def test_lower_precisions_agree_with_fp32_on_the_tiny_model(name):
    assert _world_like_agreement(name) >= 0.9


def test_bf16_weights_are_bf16_and_int8_linears_are_quantised():
    backbone = load_backbone("kd-tiny-s")
    prepare_tower(backbone.model.visual, "bf16", "cpu")
    block = backbone.model.visual.transformer.resblocks[0]
    assert isinstance(block, Bf16Block) and isinstance(block.block.attn, SdpaAttention)
    assert block.block.mlp.c_fc.weight.dtype == block.block.attn.in_proj.weight.dtype == torch.bfloat16
    # the residual stream's LayerNorms and the stem stay fp32 (bf16 there cost agreement: Bf16Block)
    assert block.block.ln_1.weight.dtype == backbone.model.visual.conv1.weight.dtype == torch.float32
    backbone = load_backbone("kd-tiny-s")
    prepare_tower(backbone.model.visual, "int8", "cpu")
    block = backbone.model.visual.transformer.resblocks[0]
    kinds = {type(m).__name__ for m in (block.attn.in_proj, block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj)}
    assert kinds == {"Linear"} and all("quantized" in type(m).__module__ for m in (block.attn.in_proj, block.mlp.c_fc))


def test_registry_refuses_an_unknown_precision_in_one_line():
    with pytest.raises(KdpipeError) as e:
        resolve("fp8", "cpu")
    assert "\n" not in str(e.value) and "fp8" in str(e.value) and "auto, fp32, bf16, int8" in str(e.value)


def test_registry_refuses_int8_on_cuda_in_one_line():
    with pytest.raises(KdpipeError) as e:
        resolve("int8", "cuda")
    assert "\n" not in str(e.value) and "int8 does not run on cuda" in str(e.value)


def test_auto_resolves_per_device(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert resolve("auto", "cpu") == AUTO["cpu"] == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert resolve("auto", "cpu") == "fp32"  # bf16 in software was never measured: exact there
    assert resolve("auto", "cuda") == AUTO["cuda"] == "bf16"
    assert resolve("auto", "meta") == "fp32"  # a device nothing was measured on runs exact
    assert all(AUTO[kind] in PRECISIONS and kind in PRECISIONS[AUTO[kind]].devices for kind in AUTO)


def test_gpu_check_flops_from_the_config_and_peaks_by_name():
    from kdpipe.gpu_check import peak_tflops, share_of_peak, vit_flops

    # ViT-B/16 at 224 px: 197 tokens, 12 blocks of width 768 (the figure published for it is ~35 GFLOPs)
    assert vit_flops(load_backbone("ViT-B-16").model.visual) == pytest.approx(35.13e9, rel=1e-3)
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("Tesla T4") is None
    assert share_of_peak(10_000, 35e9, 989.0) == "35.4% of the dense bf16 peak"
    assert share_of_peak(10_000, 35e9, None) == "peak unknown for this GPU"


def test_bf16_instructions_are_read_from_cpuinfo(tmp_path):
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n")
    older = tmp_path / "older"
    older.write_text("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd sve bf16 i8mm\n")
    assert cpu_has_bf16(str(zen4)) and cpu_has_bf16(str(arm))
    assert not cpu_has_bf16(str(older)) and not cpu_has_bf16(str(tmp_path / "missing"))
