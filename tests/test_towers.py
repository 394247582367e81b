import pytest
import torch

from kdpipe.clip import FrozenCLIP, load_backbone


def _check_zero_prompt_equivalence(backbone, batch=2):
    clip = FrozenCLIP(backbone.model)
    size = backbone.dims.image_size
    images = torch.randn(batch, 3, size, size)
    tokens = backbone.tokenizer(["a photo of a dog.", "a red circle", "x"])
    with torch.no_grad():
        assert torch.equal(clip.vision(images), backbone.model.encode_image(images))
        assert torch.equal(clip.text.encode(tokens), backbone.model.encode_text(tokens))


def test_zero_prompts_reproduce_open_clip_tiny(tiny_student, tiny_teacher):
    _check_zero_prompt_equivalence(tiny_student)
    _check_zero_prompt_equivalence(tiny_teacher)


def test_zero_prompts_reproduce_open_clip_vit_b_16_random_init():
    _check_zero_prompt_equivalence(load_backbone("ViT-B-16"), batch=1)


def test_trimmed_text_pass_matches_full_length(tiny_student):
    # positions after EOT cannot reach the EOT feature under the causal mask: trimming them keeps
    # prompted text features (context, deep prompts, names of different lengths) the same
    clip = FrozenCLIP(tiny_student.model)
    w = tiny_student.dims.text_width
    tokens = tiny_student.tokenizer(["X X X X red circle.", "X X X X dark green rounded square with stripes."])
    emb = clip.text.embed(tokens)
    emb = torch.cat([emb[:, :1], torch.randn(2, 4, w) * 0.02, emb[:, 5:]], dim=1)
    deep = [torch.randn(4, w) * 0.02, torch.randn(2, 4, w) * 0.02]
    with torch.no_grad():
        full = clip.text(emb, tokens, deep, trim=False)
        trimmed = clip.text(emb, tokens, deep)
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]  # there is padding to trim
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_prompts_get_gradients_clip_gets_none(tiny_student):
    clip = FrozenCLIP(tiny_student.model)
    w_v, w_t = tiny_student.dims.vision_width, tiny_student.dims.text_width
    vp = torch.nn.Parameter(torch.randn(4, w_v) * 0.02)
    deep_v = [torch.nn.Parameter(torch.randn(4, w_v) * 0.02) for _ in range(2)]
    tokens = tiny_student.tokenizer(["X X X X red circle."])
    emb = clip.text.embed(tokens)
    ctx = torch.nn.Parameter(torch.randn(4, w_t) * 0.02)
    emb = torch.cat([emb[:, :1], ctx.unsqueeze(0), emb[:, 5:]], dim=1)
    deep_t = [torch.nn.Parameter(torch.randn(4, w_t) * 0.02)]
    img = clip.vision(torch.randn(2, 3, 32, 32), vp, deep_v)
    txt = clip.text(emb, tokens, deep_t)
    (img @ txt.T).sum().backward()
    for p in [vp, *deep_v, ctx, *deep_t]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())


def test_prompts_change_the_output(tiny_student):
    clip = FrozenCLIP(tiny_student.model)
    images = torch.randn(2, 3, 32, 32)
    base = clip.vision(images)
    p = torch.randn(3, tiny_student.dims.vision_width)
    shallow = clip.vision(images, p)
    deep = clip.vision(images, p, [torch.randn(3, tiny_student.dims.vision_width)])
    assert not torch.allclose(base, shallow) and not torch.allclose(shallow, deep)
    # per-sample prompts [B, n, W] equal shared prompts when identical
    assert torch.allclose(clip.vision(images, p.expand(2, -1, -1)), shallow, atol=1e-6)


def test_deep_text_prompts_replace_context_positions(tiny_student):
    clip = FrozenCLIP(tiny_student.model)
    tokens = tiny_student.tokenizer(["X X X X red circle."])
    emb = clip.text.embed(tokens)
    ctx_tokens = emb[0, 1:5].clone()
    # deep prompts equal to what block 0 would have produced is not checkable; instead check that
    # replacing with the same tensor at every depth differs from no replacement, and that None is a no-op
    same = clip.text(emb, tokens, [None, None])
    assert torch.equal(same, clip.text(emb, tokens))
    changed = clip.text(emb, tokens, [ctx_tokens])
    assert not torch.allclose(changed, same)


def test_frozen_parts_stay_in_eval(tiny_student):
    module = torch.nn.Module()
    module.clip = FrozenCLIP(tiny_student.model)
    module.train()
    assert not tiny_student.model.training
    assert all(not m.training for m in tiny_student.model.modules())


def test_bool_mask_refused(tiny_student):
    from kdpipe.clip.towers import _run_blocks

    x = torch.randn(1, 4, tiny_student.dims.text_width)
    with pytest.raises(TypeError, match="additive float attention masks only"):
        _run_blocks(tiny_student.model.transformer, x, torch.ones(4, 4, dtype=torch.bool), None, None)
    # the same call with the additive float mask it stands for runs: the refusal is about the dtype
    causal = torch.full((4, 4), float("-inf")).triu(1)
    assert _run_blocks(tiny_student.model.transformer, x, causal, None, None).shape == x.shape


def test_training_path_runs_sequence_first_and_gives_the_block_path_result(tiny_student):
    """With gradients on, the towers run open_clip's blocks sequence-first (the reference layout);
    the result is the batch-first blocks' up to float rounding, prompts and all, and gradients reach the prompts."""
    import kdpipe.clip.towers as towers

    clip = FrozenCLIP(tiny_student.model)
    w = tiny_student.dims.vision_width
    first = torch.randn(2, w, requires_grad=True)
    deep = [torch.randn(2, w) for _ in range(tiny_student.dims.vision_layers - 1)]
    images = torch.randn(3, 3, tiny_student.dims.image_size, tiny_student.dims.image_size)
    calls = []
    original = towers._sequence_first_block
    towers._sequence_first_block = lambda *a: calls.append(1) or original(*a)
    try:
        trained = clip.vision(images, first, deep)
    finally:
        towers._sequence_first_block = original
    assert calls, "the training path did not run sequence-first"
    with torch.no_grad():
        inferred = clip.vision(images, first, deep)
    torch.testing.assert_close(trained.detach(), inferred, rtol=1e-4, atol=1e-5)
    trained.sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0
    tokens = tiny_student.tokenizer(["a photo of a red circle."])
    emb = clip.text.embed(tokens).requires_grad_(True)
    tdeep = [torch.randn(2, tiny_student.dims.text_width) for _ in range(2)]
    trained_text = clip.text(emb, tokens, deep_prompts=tdeep)
    with torch.no_grad():
        inferred_text = clip.text(emb, tokens, deep_prompts=tdeep)
    torch.testing.assert_close(trained_text.detach(), inferred_text, rtol=1e-4, atol=1e-5)


def test_training_path_computes_attention_through_sdpa(tiny_student, monkeypatch):
    """The student's training forward reaches scaled_dot_product_attention in every block (fused
    kernels under CUDA's bf16 autocast; no [B, H, L, L] weights kept for backward)."""
    import torch.nn.functional as F

    clip = FrozenCLIP(tiny_student.model)
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    prompt = torch.randn(2, tiny_student.dims.vision_width, requires_grad=True)
    images = torch.randn(2, 3, tiny_student.dims.image_size, tiny_student.dims.image_size)
    clip.vision(images, prompt).sum().backward()
    assert len(calls) == tiny_student.dims.vision_layers
