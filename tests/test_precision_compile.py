"""The compiled encoder's fixed batch (padding, splitting, eager fallback), why compiling is skipped,
the look-ahead order of the device decode, and the bench's agreement measure."""

from types import SimpleNamespace

import pytest
import torch

from kdpipe.infer.bench_precision import agreement
from kdpipe.infer.compiled import FixedBatch, compile_encoder, skip_reason
from kdpipe.infer.device_decode import decoded_ahead


def test_fixed_batch_pads_small_batches_and_splits_large_ones():
    shapes = []

    def compiled(x):
        shapes.append(len(x))
        return x.sum(dim=(1, 2, 3), keepdim=False)[:, None] * 2

    fb = FixedBatch(compiled, eager=None, size=4)
    x = torch.arange(10 * 3 * 2 * 2, dtype=torch.float32).view(10, 3, 2, 2)
    out = fb(x)
    assert shapes == [4, 4, 4]  # 10 images: two full batches and one padded, one graph shape throughout
    assert torch.equal(out, x.sum(dim=(1, 2, 3))[:, None] * 2)
    assert fb(x[:1]).shape == (1, 1)


def test_fixed_batch_falls_back_to_eager_with_one_line():
    said = []

    def broken(x):
        raise RuntimeError("inductor: no kernel\nlong trace")

    fb = FixedBatch(broken, eager=lambda x: x[:, :1, 0, 0], size=4, say=said.append)
    x = torch.randn(3, 3, 2, 2)
    assert torch.equal(fb(x), x[:, :1, 0, 0]) and torch.equal(fb(x), x[:, :1, 0, 0])
    assert said == ["torch.compile failed (RuntimeError: inductor: no kernel); running eagerly"]


def test_compile_is_skipped_with_a_reason(monkeypatch):
    monkeypatch.delenv("KDPIPE_COMPILE", raising=False)  # conftest turns compiling off for the suite
    cpu = torch.device("cpu")
    assert skip_reason("int8", cpu) == "not measured to pay for int8 on cpu"
    assert skip_reason("bf16", cpu, enabled=False) == "turned off (--no-compile)"
    monkeypatch.setenv("KDPIPE_COMPILE", "0")
    assert skip_reason("bf16", cpu) == "turned off (KDPIPE_COMPILE=0)"
    said = []
    fn = lambda x: x  # noqa: E731
    assert compile_encoder(fn, 8, "bf16", cpu, say=said.append) is fn
    assert said == ["torch.compile skipped: turned off (KDPIPE_COMPILE=0)"]


def test_decoded_ahead_decodes_the_next_batch_before_handing_out_this_one():
    events = []
    batches = [SimpleNamespace(images=torch.zeros(1), keys=[f"k{i}"]) for i in range(3)]
    batches.insert(1, SimpleNamespace(images=None, keys=[]))  # a batch whose images were all unreadable

    def on_device(images, keys, device):
        events.append(f"decode {keys[0]}")
        return images, keys, []

    for batch, (images, keys, bad) in decoded_ahead(iter(batches), on_device, torch.device("cpu")):
        events.append(f"model {keys[0] if keys else '-'}")
        assert keys == batch.keys
    assert events == ["decode k0", "model k0", "decode k1", "model -", "decode k2", "model k1", "model k2"]


def test_agreement_on_known_answers():
    ref = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    same, dmax = agreement(ref, ref.clone())
    assert (same, dmax) == (1.0, 0.0)
    # the third row's top-1 flips from class 2 to class 0; the largest change is 0.4 -> 0.25
    other = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.4, 0.35, 0.25], [0.5, 0.25, 0.25]])
    same, dmax = agreement(ref, other)
    assert same == 0.75 and dmax == pytest.approx(0.15)
    with pytest.raises(ValueError, match="one shape"):
        agreement(ref, other[:2])
