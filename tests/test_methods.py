"""Every registered method passes these, on the tiny backbone: a new method is tested once registered."""

import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.methods import build_method, get_method, list_methods, load_learned, read_learned, save_learned

CLASSES = ["red circle", "blue square", "green_triangle"]
TEACHER_DIM = 48  # kd-tiny-t's embed dim: what a promptkd student on kd-tiny-s projects to


def make(name, backbone, classnames=CLASSES, **overrides):
    if "teacher_dim" in get_method(name).config_cls.field_names():
        overrides.setdefault("teacher_dim", TEACHER_DIM)
    m = build_method(name, backbone, classnames, overrides)
    if m.needs_class_features:
        g = torch.Generator().manual_seed(7)
        m.set_class_features(torch.randn(len(classnames), m.cfg.teacher_dim, generator=g))
    return m


def batch(backbone, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = backbone.dims.image_size
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % len(CLASSES)


def test_registry_lists_every_method_in_order():
    assert list_methods() == ["zeroshot", "coop", "cocoop", "vpt", "ivlp", "maple", "mudpt", "promptsrc", "promptkd"]


def test_unknown_method_names_the_known_ones(tiny_student):
    with pytest.raises(KdpipeError, match="known methods: zeroshot, coop"):
        build_method("coco", tiny_student, CLASSES)


@pytest.mark.parametrize("name", list_methods())
def test_forward_shapes(name, tiny_student):
    m = make(name, tiny_student).eval()
    images, _ = batch(tiny_student)
    with torch.no_grad():
        feats = m.encode_images(images)
        logits = m.logits(images)
        classes = m.class_features()
    dim = TEACHER_DIM if name == "promptkd" else tiny_student.dims.embed_dim
    assert feats.shape == (4, dim)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert classes.shape == (len(CLASSES), dim)
    assert torch.allclose(classes.norm(dim=-1), torch.ones(len(CLASSES)), atol=1e-5)
    assert logits.shape == (4, len(CLASSES)) and torch.isfinite(logits).all()
    # scoring against given class features is what classify does with stored features
    with torch.no_grad():
        if name == "cocoop":
            # its prompts depend on the image: each image against its own class features gives its
            # logits, while the stored, image-independent features give other ones
            given = torch.cat([m.logits(images[i : i + 1], class_features=f) for i, f in enumerate(cocoop_class_features(m, images))])
            assert not torch.allclose(m.logits(images, class_features=classes), logits, atol=1e-3)
        else:
            given = m.logits(images, class_features=classes)
    assert torch.allclose(given, logits, atol=1e-5)


def cocoop_class_features(m, images) -> list[torch.Tensor]:
    """CoCoOp's class features for each image: the learned context plus the Meta-Net bias of that
    image's frozen feature, encoded one image at a time."""
    feats = []
    for bias in m.meta_net(m.encode_images(images)):
        emb, tokens = m.text_ctx.embeddings(CLASSES, m.text_ctx.ctx + bias)
        feats.append(torch.nn.functional.normalize(m.clip.text(emb, tokens), dim=-1))
    return feats


@pytest.mark.parametrize("name", list_methods())
def test_backward_reaches_exactly_the_learned_parameters(name, tiny_student):
    m = make(name, tiny_student).train()
    images, labels = batch(tiny_student)
    loss, logs = m.loss(images, labels)
    assert torch.isfinite(loss) and "ce" in logs
    learned = {id(p) for _, p in m.learned_parameters()}
    if not learned:
        assert not loss.requires_grad
        return
    loss.backward()
    for n, p in m.named_parameters():
        if id(p) in learned:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    assert all(not n.startswith("clip.") for n, _ in m.learned_parameters())


def _perturbed(name, backbone):
    m = make(name, backbone)
    with torch.no_grad():
        for _, p in m.learned_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    images, _ = batch(backbone)
    m.train()
    m.encode_images(images)  # moves BatchNorm statistics where there are any
    return m.eval()


@pytest.mark.parametrize("name", list_methods())
def test_save_load_gives_identical_logits(name, tiny_student, tmp_path):
    m1 = _perturbed(name, tiny_student)
    images, _ = batch(tiny_student, seed=1)
    with torch.no_grad():
        ref = m1.logits(images)
    path = save_learned(m1, tmp_path / "learned.safetensors")
    torch.manual_seed(123)
    m2 = make(name, tiny_student).eval()
    with torch.no_grad():
        before = m2.logits(images)
    if m1.num_learned():
        assert not torch.allclose(before, ref)
    load_learned(m2, path)
    with torch.no_grad():
        assert torch.equal(m2.logits(images), ref)
    state, meta = read_learned(path)
    assert meta["method"] == name and meta["num_classes"] == len(CLASSES) and meta["classnames"] == CLASSES
    assert set(state) == set(m1.learned_state_dict())


def _refused(target, state, meta):
    with pytest.raises(KdpipeError) as e:
        target.load_learned_state_dict(state, meta)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("name", list_methods())
def test_mismatched_checkpoint_is_refused(name, tiny_student, tiny_teacher):
    src = _perturbed(name, tiny_student)
    state, meta = src.learned_state_dict(), src.checkpoint_meta()
    other = next(n for n in list_methods() if n != name)
    assert name in _refused(make(other, tiny_student), state, meta)
    assert "backbone" in _refused(make(name, tiny_teacher), state, meta)
    assert "classes" in _refused(make(name, tiny_student, CLASSES + ["yellow star"]), state, meta)
    if state:  # a tensor of the wrong shape or a missing key is refused too, never half-loaded
        key = sorted(state)[0]
        bad = dict(state, **{key: torch.zeros(1)})
        _refused(make(name, tiny_student), bad, meta)
        _refused(make(name, tiny_student), {k: v for k, v in state.items() if k != key}, meta)


@pytest.mark.parametrize("name", list_methods())
def test_config_has_reference_defaults_and_validates_overrides(name, tiny_student):
    cls = get_method(name).config_cls
    assert cls.description
    cfg = cls.resolve()
    assert cfg.momentum == 0.9 and cfg.weight_decay == 5e-4 and cfg.warmup_epochs == 1 and cfg.warmup_lr == 1e-5
    with pytest.raises(KdpipeError, match="unknown setting"):
        build_method(name, tiny_student, CLASSES, {"no_such_setting": 1})


def _methods(where) -> list[str]:
    return [n for n in list_methods() if where(get_method(n))]


def _counting_text_features(m) -> list:
    calls = []
    real = m._text_features
    m._text_features = lambda names: calls.append(names) or real(names)
    return calls


@pytest.mark.parametrize("name", _methods(lambda cls: not cls.learns_text and not cls.needs_class_features))
def test_text_features_are_computed_once_when_nothing_learned_touches_them(name, tiny_student):
    m = make(name, tiny_student).eval()
    calls = _counting_text_features(m)
    a = m.class_features()
    m.logits(batch(tiny_student)[0])  # with gradients on: still the cached rows
    with torch.no_grad():
        b = m.class_features()
    assert len(calls) == 1 and a is b


@pytest.mark.parametrize("name", _methods(lambda cls: cls.learns_text and not cls.needs_class_features))
def test_learned_text_features_are_cached_until_a_learned_tensor_changes(name, tiny_student):
    m = make(name, tiny_student).eval()
    calls = _counting_text_features(m)
    with torch.no_grad():
        a = m.class_features()
        assert m.class_features() is a and len(calls) == 1  # evaluation: computed once
        for _, p in m.learned_parameters():
            p.add_(0.5)  # what an optimizer step does
        b = m.class_features()
    assert len(calls) == 2 and not torch.allclose(a, b)
    m.class_features()
    m.class_features()  # training: every call goes through the prompts, so gradients reach them
    assert len(calls) == 4


@pytest.mark.parametrize("name", _methods(lambda cls: cls.needs_class_features))
def test_a_method_without_a_text_side_scores_against_the_class_features_it_is_given(name, tiny_student):
    m = make(name, tiny_student).eval()
    calls = _counting_text_features(m)
    given = m.class_features()
    assert calls == [] and given.shape[0] == len(CLASSES)
    with pytest.raises(KdpipeError, match="class_features="):
        m.class_features(CLASSES[:1])  # it cannot encode other class names


def test_every_method_is_covered_by_one_of_the_class_feature_tests():
    groups = [_methods(lambda c: not c.learns_text and not c.needs_class_features),
              _methods(lambda c: c.learns_text and not c.needs_class_features), _methods(lambda c: c.needs_class_features)]
    assert sorted(sum(groups, [])) == sorted(list_methods()) and all(groups)


@pytest.mark.parametrize("name", list_methods())
def test_mixed_precision_keeps_fp32_master_weights(name, tiny_student):
    """What CUDA training does (autocast, fp32 parameters), exercised with CPU bf16 autocast."""
    m = make(name, tiny_student).train()
    images, labels = batch(tiny_student)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = m.loss(images, labels)
        logits = m.logits(images)
    assert torch.isfinite(loss) and logits.shape == (4, len(CLASSES))
    if m.num_learned():
        loss.backward()
        for n, p in m.learned_parameters():
            assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, n


def test_methods_command_lists_methods_with_counts(tiny_student):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["methods", "--backbone", "kd-tiny-s", "--teacher-dim", "48"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in list_methods():
        row = next(line for line in lines if line.strip("│ ").startswith(name + " "))
        n = make(name, tiny_student).num_learned()
        assert f"{n:,}" in row and get_method(name).config_cls.description[:30] in row


@pytest.mark.parametrize("name", ["coop", "maple", "mudpt"])
def test_learned_text_features_are_cached_only_until_the_prompts_change(name, tiny_student):
    m = make(name, tiny_student).eval()
    calls = []
    real = m._text_features
    m._text_features = lambda names: calls.append(names) or real(names)
    with torch.no_grad():
        a = m.class_features()
        assert m.class_features() is a and len(calls) == 1
        p = m.learned_parameters()[0][1]
        p.add_(torch.randn_like(p))  # an optimizer step or a load does this in place
        b = m.class_features()
    assert len(calls) == 2 and not torch.allclose(a, b)
    m.class_features().sum()  # with gradients enabled: always recomputed, never a cached tensor
    assert len(calls) == 3
