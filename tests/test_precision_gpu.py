"""Precisions and the overlapped decode on CUDA. Marked ``gpu``: deselected by the README's CPU test
command, run by ``kdpipe bench gpu``; without a GPU they fail (pick_device refuses cuda), never skip."""

import pytest
import torch
import torch.nn.functional as F

from kdpipe.train.device import pick_device

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    return pick_device("cuda")


def _model(cuda, precision):
    from kdpipe.clip import load_backbone
    from kdpipe.infer.bundle import ClassModel
    from kdpipe.methods import build_method

    names = [f"class {i}" for i in range(10)]
    backbone = load_backbone("kd-tiny-s", device=cuda)
    method = build_method("zeroshot", backbone, names).to(cuda).eval()
    feats = F.normalize(torch.randn(10, backbone.dims.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    return ClassModel(method, names, feats, 100.0, source="gpu test").set_precision(precision, cuda)


def test_sdpa_attention_matches_mha_on_cuda_in_fp32(cuda):
    from kdpipe.clip.attention import SdpaAttention

    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).to(cuda).eval()
    x = torch.randn(3, 50, 64, device=cuda)
    with torch.no_grad():
        torch.testing.assert_close(SdpaAttention(mha)(x)[0], mha(x, x, x, need_weights=False)[0], rtol=1e-4, atol=1e-4)


def test_bf16_on_cuda_agrees_with_fp32_and_compiled_fixed_batch_matches_eager(cuda):
    from kdpipe.infer.compiled import compile_encoder

    images = torch.randn(37, 3, 32, 32, device=cuda)  # not a multiple of the batch: the last one is padded
    with torch.inference_mode():
        fp32 = _model(cuda, "fp32")
        ref = fp32.method.encode_images(images) @ fp32.class_features.to(cuda).T
        bf16 = _model(cuda, "bf16")
        eager = bf16.method.encode_images(images)
        fn = compile_encoder(bf16.method.encode_images, 16, "bf16", cuda, say=pytest.fail)
        compiled = torch.cat([fn(b) for b in images.split(16)])
    assert eager.dtype == torch.float32
    assert (eager @ bf16.class_features.to(cuda).T).argmax(-1).eq(ref.argmax(-1)).float().mean() >= 0.9
    assert fn.failed is None and compiled.shape == eager.shape
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)


def test_decoded_ahead_on_a_second_stream_gives_the_synchronous_result(cuda, tmp_path):
    from kdpipe.infer.bench_classify import synthetic_photos
    from kdpipe.infer.device_decode import EncodedImage, decoded_ahead
    from kdpipe.infer.sources import open_source

    synthetic_photos(tmp_path / "imgs", 24, size=(160, 120))
    tf = EncodedImage(32, [0.5] * 3, [0.25] * 3, "gpu")
    batches = list(open_source(tmp_path / "imgs").batches(tf, 8, 2, set(), pin_memory=True))
    ahead = [d for _, d in decoded_ahead(iter(batches), tf.on_device, cuda)]
    plain = [tf.on_device(b.images, b.keys, cuda) for b in batches]
    torch.cuda.synchronize()
    for (a_img, a_keys, _), (p_img, p_keys, _) in zip(ahead, plain):
        assert a_keys == p_keys and torch.equal(a_img, p_img)
