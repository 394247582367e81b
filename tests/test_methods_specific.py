"""What each method promises beyond the shared interface: init, equivalences, couplings, GPA, counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.clip import load_backbone
from kdpipe.errors import KdpipeError
from kdpipe.methods import build_method, list_methods
from kdpipe.methods.prompts import hand_prompt_features
from kdpipe.methods.templates import IMAGENET_TEMPLATES
from kdpipe.train.gpa import gaussian_weights

CLASSES = ["red circle", "blue square", "green_triangle"]


def images(backbone, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.dims.image_size, backbone.dims.image_size, generator=g)


def hand(backbone, template, classnames=CLASSES):
    z = build_method("zeroshot", backbone, classnames, {"template": template})
    return z.class_features()


# ---- text context initialisation ---------------------------------------------------------------
def test_coop_init_from_words_equals_the_hand_prompt(tiny_student):
    coop = build_method("coop", tiny_student, CLASSES)
    with torch.no_grad():
        assert torch.allclose(coop.class_features(), hand(tiny_student, "a photo of a {}."), atol=1e-6)


def test_fewer_context_tokens_than_init_words_keep_the_rest_as_frozen_words(tiny_student):
    # n_ctx 2 with "a photo of a": learned tokens are "a photo", "of a" stays as words
    m = build_method("ivlp", tiny_student, CLASSES, {"n_ctx_text": 2, "depth_text": 1})
    assert m.text_ctx.prefix == "a photo of a"
    words = m.clip.text.embed(tiny_student.tokenizer(["a photo"]))[0, 1:3]
    assert torch.equal(m.text_ctx.ctx.detach(), words)
    with torch.no_grad():
        assert torch.allclose(m.class_features(), hand(tiny_student, "a photo of a {}."), atol=1e-6)
    maple = build_method("maple", tiny_student, CLASSES)
    assert maple.text_ctx.ctx.shape == (2, tiny_student.dims.text_width) and maple.text_ctx.prefix == "a photo of a"


def test_more_context_tokens_than_init_words_start_random_after_the_words(tiny_student):
    m = build_method("coop", tiny_student, CLASSES, {"n_ctx": 6})
    assert m.text_ctx.prefix == "a photo of a X X"
    words = m.clip.text.embed(tiny_student.tokenizer(["a photo of a"]))[0, 1:5]
    assert torch.equal(m.text_ctx.ctx.detach()[:4], words)
    assert m.text_ctx.ctx.detach()[4:].std() < 0.05


def test_random_init_is_small_normal(tiny_student):
    torch.manual_seed(0)
    m = build_method("coop", tiny_student, CLASSES, {"n_ctx": 16, "ctx_init": ""})
    assert abs(float(m.text_ctx.ctx.detach().std()) - 0.02) < 0.004


def test_coop_class_positions_and_class_specific_context(tiny_student):
    end = build_method("coop", tiny_student, CLASSES)
    feats = {"end": end.class_features().detach()}
    for pos in ("middle", "front"):
        m = build_method("coop", tiny_student, CLASSES, {"class_position": pos})
        emb, tokens = m.text_ctx.embeddings(CLASSES)
        assert emb.shape == (3, tiny_student.dims.context_length, tiny_student.dims.text_width)
        # the same tokens, rearranged: the class name moved, the context did not change
        assert torch.allclose(emb.sum(1), end.text_ctx.embeddings(CLASSES)[0].sum(1), atol=1e-5)
        feats[pos] = m.class_features().detach()
    assert not torch.allclose(feats["end"], feats["front"]) and not torch.allclose(feats["end"], feats["middle"])
    # front with the class first: [SOS] class ctx . [EOS]; check the class name's word sits at position 1
    front = build_method("coop", tiny_student, ["cat"], {"class_position": "front"})
    emb, _ = front.text_ctx.embeddings(["cat"])
    cat = front.clip.text.embed(tiny_student.tokenizer(["cat"]))[0, 1]
    assert torch.equal(emb[0, 1], cat)

    csc = build_method("coop", tiny_student, CLASSES, {"class_specific": True})
    assert csc.text_ctx.ctx.shape == (3, 4, tiny_student.dims.text_width)
    assert csc.num_learned() == 3 * end.num_learned()
    with pytest.raises(KdpipeError, match="class-specific"):
        csc.class_features(["a", "b"])
    # a shared context scores class names it never saw (base-to-novel)
    assert end.class_features(["yellow star", "pink moon"]).shape == (2, tiny_student.dims.embed_dim)
    with pytest.raises(KdpipeError, match="class_position"):
        build_method("coop", tiny_student, CLASSES, {"class_position": "left"})


# ---- zero-shot and VPT --------------------------------------------------------------------------
def test_zeroshot_uses_the_dataset_template_and_ensembles(tiny_student):
    pets = build_method("zeroshot", tiny_student, CLASSES, dataset="oxford_pets")
    assert torch.allclose(pets.class_features(), hand(tiny_student, "a photo of a {}, a type of pet."))
    custom = build_method("zeroshot", tiny_student, CLASSES, dataset="my_own_folder")
    assert torch.allclose(custom.class_features(), hand(tiny_student, "a photo of a {}."))
    ens = build_method("zeroshot", tiny_student, CLASSES, {"ensemble": "imagenet"})
    per = torch.stack([hand(tiny_student, t) for t in IMAGENET_TEMPLATES[:60]])
    assert len(IMAGENET_TEMPLATES) == 60
    assert torch.allclose(ens.class_features(), F.normalize(per.mean(0), dim=-1), atol=1e-5)
    with pytest.raises(KdpipeError, match="needs a"):
        build_method("zeroshot", tiny_student, CLASSES, {"template": "a photo"})


def test_vpt_without_prompts_equals_zeroshot(tiny_student):
    x = images(tiny_student)
    vpt = build_method("vpt", tiny_student, CLASSES, {"n_ctx": 0})
    zs = build_method("zeroshot", tiny_student, CLASSES)
    assert vpt.num_learned() == 0
    with torch.no_grad():
        assert torch.equal(vpt.logits(x), zs.logits(x))
        assert not torch.equal(build_method("vpt", tiny_student, CLASSES).logits(x), zs.logits(x))


def test_vpt_shallow_and_deep(tiny_student):
    shallow = build_method("vpt", tiny_student, CLASSES, {"depth": 1})
    deep = build_method("vpt", tiny_student, CLASSES)
    w = tiny_student.dims.vision_width
    assert shallow.vision_prompts.prompts.shape == (1, 8, w)
    # depth 12 is capped at the tiny tower's 3 blocks: input + blocks 1..2
    assert deep.vision_prompts.prompts.shape == (tiny_student.dims.vision_layers, 8, w)


# ---- couplings --------------------------------------------------------------------------------
def test_maple_vision_prompts_follow_the_text_prompts(tiny_student):
    m = build_method("maple", tiny_student, CLASSES)
    x = images(tiny_student)
    with torch.no_grad():
        before = [p.clone() for p in m.vision_prompts()]
        img_before = m.encode_images(x)
        m.text_deep[0].add_(torch.randn_like(m.text_deep[0]))
        after = m.vision_prompts()
        assert torch.equal(after[0], before[0]) and not torch.allclose(after[1], before[1])
        m.text_ctx.ctx.add_(torch.randn_like(m.text_ctx.ctx))
        after = m.vision_prompts()
        assert not torch.allclose(after[0], before[0])
        assert not torch.allclose(m.encode_images(x), img_before)
    assert len(m.couplings) == m.depth == 3
    assert m.couplings[0].in_features == tiny_student.dims.text_width
    assert m.couplings[0].out_features == tiny_student.dims.vision_width


def test_mudpt_fuses_both_ways(tiny_student):
    m = build_method("mudpt", tiny_student, CLASSES)
    x = images(tiny_student)
    with torch.no_grad():
        text0 = m.class_features().clone()
        img0 = m.encode_images(x)
        m.vision_prompts.prompts.add_(torch.randn_like(m.vision_prompts.prompts))  # vision prompts move the text side ...
        assert not torch.allclose(m.class_features(), text0)
        img1 = m.encode_images(x)
        m.text_ctx.ctx.add_(torch.randn_like(m.text_ctx.ctx))  # ... and text prompts move the vision side
        assert not torch.allclose(m.encode_images(x), img1)
    assert not torch.allclose(img0, img1)


def test_cocoop_without_meta_net_bias_is_coop(tiny_student):
    m = build_method("cocoop", tiny_student, CLASSES)
    x = images(tiny_student)
    with torch.no_grad():
        m.meta_net[-1].weight.zero_()
        m.meta_net[-1].bias.zero_()
        plain = m.clip.logit_scale * m.encode_images(x) @ m.class_features().t()
        assert torch.allclose(m.logits(x), plain, atol=1e-5)
        m.meta_net[-1].bias.copy_(torch.randn_like(m.meta_net[-1].bias))  # not constant: LayerNorm hides that
        assert not torch.allclose(m.logits(x), plain, atol=1e-3)
    assert m.meta_net[0].out_features == max(1, tiny_student.dims.embed_dim // 16)


# ---- PromptSRC ------------------------------------------------------------------------------------
def test_promptsrc_text_target_is_the_normalised_mean_of_raw_template_features(tiny_student):
    m = build_method("promptsrc", tiny_student, CLASSES[:2])
    raw = hand_prompt_features(tiny_student, m.clip, CLASSES[:2], IMAGENET_TEMPLATES[:1])  # one template: raw
    assert torch.allclose(raw, m.clip.text.encode(tiny_student.tokenizer(["a photo of a red circle.", "a photo of a blue square."])))
    per = torch.stack([m.clip.text.encode(tiny_student.tokenizer([t.format(c) for c in CLASSES[:2]])) for t in IMAGENET_TEMPLATES])
    assert torch.allclose(m.text_target(), F.normalize(per.mean(0), dim=-1), atol=1e-5)


def test_promptsrc_regularisers_vanish_when_prompts_equal_frozen_clip(tiny_student, monkeypatch):
    m = build_method("promptsrc", tiny_student, CLASSES)
    x, y = images(tiny_student), torch.tensor([0, 1, 2, 0])
    monkeypatch.setattr(m, "encode_images", lambda imgs: F.normalize(m.clip.vision(imgs), dim=-1))
    monkeypatch.setattr(m, "class_features", lambda names=None: m.text_target())
    loss, logs = m.loss(x, y)
    assert logs["scl_text"] == 0 and logs["scl_image"] == 0 and abs(logs["scl_kl"]) < 1e-6
    assert abs(float(loss.detach()) - logs["ce"]) < 1e-5
    monkeypatch.undo()
    loss, logs = m.loss(x, y)
    assert logs["scl_text"] > 0 and logs["scl_image"] > 0
    assert abs(float(loss.detach()) - (logs["ce"] + logs["scl_text"] + logs["scl_image"] + logs["scl_kl"])) < 1e-4


def test_gpa_weights_sum_to_one_and_peak_at_the_scaled_mean():
    w = gaussian_weights(20, 15, 1, ref_epochs=20)
    assert abs(sum(w) - 1) < 1e-12 and max(range(20), key=w.__getitem__) == 14  # epoch 15 (1-based)
    expected = [math.exp(-((e - 15) ** 2) / 2) for e in range(1, 21)]
    assert all(abs(a - b / sum(expected)) < 1e-12 for a, b in zip(w, expected))
    short = gaussian_weights(4, 15, 1, ref_epochs=20)  # mean moves to 15 * 4 / 20 = 3
    assert abs(sum(short) - 1) < 1e-12 and max(range(4), key=short.__getitem__) == 2
    assert all(abs(sum(gaussian_weights(e, 15, 1)) - 1) < 1e-12 for e in (1, 2, 5))  # mean past the end: no underflow


def test_gpa_aggregate_equals_hand_computed_weighted_mean(tiny_student):
    epochs = 3
    m = build_method("promptsrc", tiny_student, CLASSES, {"epochs": epochs})
    snapshots = []
    for epoch in range(epochs):
        with torch.no_grad():
            for _, p in m.learned_parameters():
                p.copy_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in m.learned_state_dict().items()})
        m.on_epoch_end(epoch, epochs)
    mean = 15 * epochs / 20
    raw = [math.exp(-((e - mean) ** 2) / 2) for e in range(1, epochs + 1)]
    weights = [r / sum(raw) for r in raw]
    m.finalize()
    for k, v in m.learned_state_dict().items():
        expected = sum(w * s[k] for w, s in zip(weights, snapshots))
        assert torch.allclose(v, expected, atol=1e-6), k


# ---- PromptKD student -------------------------------------------------------------------------------
def test_promptkd_scores_teacher_features_with_its_own_scale(tiny_student):
    m = build_method("promptkd", tiny_student, CLASSES, {"teacher_dim": 48}).eval()
    x = images(tiny_student)
    with pytest.raises(KdpipeError, match="no text tower"):
        m.logits(x)
    with pytest.raises(KdpipeError, match=r"\[3, 48\]"):
        m.set_class_features(torch.randn(3, 32))
    teacher = F.normalize(torch.randn(3, 48), dim=-1)
    with torch.no_grad():
        first, deep = m.vision_prompts()
        f = m.projector(m.clip.vision(x, first, deep))
        expected = m.clip.logit_scale * F.normalize(f, dim=-1) @ teacher.t()
        assert torch.allclose(m.logits(x, class_features=teacher), expected, atol=1e-5)
        m.set_class_features(teacher)
        assert torch.allclose(m.logits(x), expected, atol=1e-5)
    assert [type(l).__name__ for l in m.projector] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert any("running_mean" in k for k in m.learned_state_dict())
    assert not any(n.startswith("text") for n, _ in m.learned_parameters())


# ---- learned-parameter counts on ViT-B/16, against the reference architectures -----------------------
def _vit_b16_reference_counts():
    d, wt, wv, t = 512, 512, 768, 768  # ViT-B/16 embed, text width, vision width; teacher ViT-L/14 embed
    linear = lambda i, o: i * o + o  # noqa: E731
    layernorm = lambda w: 2 * w  # noqa: E731

    def block(w):  # nn.TransformerEncoderLayer(w, mlp ratio 1): attention + 2 Linear + 2 LayerNorm
        return linear(w, 3 * w) + linear(w, w) + 2 * linear(w, w) + 2 * layernorm(w)

    return {
        "zeroshot": 0,
        "coop": 4 * wt,
        "cocoop": 4 * wt + linear(d, d // 16) + linear(d // 16, wt),
        "vpt": 12 * 8 * wv,
        "ivlp": 12 * 2 * wt + 12 * 2 * wv,
        "maple": 9 * 2 * wt + 9 * linear(wt, wv),
        "mudpt": 9 * 4 * wt + 9 * 4 * wv + layernorm(wt) + block(wt) + layernorm(wt) + linear(wt, wv)
        + layernorm(wv) + block(wv) + layernorm(wv) + linear(wv, wt),
        "promptsrc": 9 * 4 * wt + 9 * 4 * wv,
        "promptkd": 9 * 4 * wv + linear(d, t) + 2 * t + linear(t, t),
    }


def test_learned_parameter_counts_on_vit_b_16():
    counts = _vit_b16_reference_counts()
    assert counts["coop"] == 2_048 and counts["cocoop"] == 35_360 and counts["maple"] == 3_555_072
    assert counts["promptkd"] == 1_013_760  # "about 1.01 M" in the PromptKD paper
    bb = load_backbone("ViT-B-16")  # random init: only the shapes matter
    for name in list_methods():
        assert name in counts, f"add the reference learned-parameter count of {name!r} on ViT-B/16"
        m = build_method(name, bb, ["a", "b"])
        assert m.num_learned() == counts[name], name


# ---- base-to-novel defaults, as the official config files set them --------------------------------------
# method -> the settings its official config file sets (files listed by `kdpipe methods --reference`)
REFERENCE_DEFAULTS = {
    "coop": {"n_ctx": 4, "ctx_init": "a photo of a", "class_position": "end", "class_specific": False, "lr": 0.002, "batch_size": 32, "epochs": 200},
    "cocoop": {"n_ctx": 4, "ctx_init": "a photo of a", "lr": 0.002, "batch_size": 1, "epochs": 10},
    "vpt": {"n_ctx": 8, "depth": 12, "lr": 0.0025, "batch_size": 4, "epochs": 5},
    "ivlp": {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 12, "depth_vision": 12, "lr": 0.0035, "batch_size": 4, "epochs": 5},
    "maple": {"n_ctx": 2, "depth": 9, "lr": 0.0035, "batch_size": 4, "epochs": 5},
    "mudpt": {"n_ctx": 4, "depth": 9, "lr": 0.0025, "batch_size": 4, "epochs": 10},
    "promptsrc": {"n_ctx_text": 4, "n_ctx_vision": 4, "depth_text": 9, "depth_vision": 9, "lr": 0.0025, "batch_size": 4,
                   "epochs": 20, "text_loss_weight": 25.0, "image_loss_weight": 10.0, "gpa_mean": 15.0, "gpa_std": 1.0},
    "promptkd": {"n_ctx": 4, "depth": 9, "lr": 0.005, "batch_size": 8, "epochs": 20, "teacher_dim": 768},
}


@pytest.mark.parametrize("name", sorted(REFERENCE_DEFAULTS))
def test_defaults_are_the_official_base_to_novel_configs(name):
    from kdpipe.methods import get_method

    cls = get_method(name).config_cls
    cfg = cls()
    assert {k: getattr(cfg, k) for k in REFERENCE_DEFAULTS[name]} == REFERENCE_DEFAULTS[name]
    assert (cfg.warmup_epochs, cfg.warmup_lr, cfg.momentum, cfg.weight_decay) == (1, 1e-5, 0.9, 5e-4)
    assert cls.reference.endswith(")") and "configs/trainers/" in cls.reference  # the table names its source


def test_every_trained_method_has_a_reference_row():
    from kdpipe.commands.methods import reference_rows
    from kdpipe.methods import list_methods

    rows = {r["method"]: r for r in reference_rows()}
    assert set(rows) == set(list_methods()) and set(REFERENCE_DEFAULTS) == set(list_methods()) - {"zeroshot"}
    assert (rows["ivlp"]["n_ctx"], rows["ivlp"]["depth"], rows["promptsrc"]["n_ctx"], rows["promptsrc"]["depth"]) == ("2+2", "12/12", "4+4", "9/9")


def test_dataset_defaults_and_string_overrides(tiny_student):
    assert build_method("coop", tiny_student, CLASSES, dataset="imagenet").cfg.epochs == 50
    assert build_method("coop", tiny_student, CLASSES, dataset="oxford_pets").cfg.epochs == 200
    m = build_method("ivlp", tiny_student, CLASSES, {"n_ctx_text": "2", "lr": "0.01", "epochs": "3"})
    assert (m.cfg.n_ctx_text, m.cfg.lr, m.cfg.epochs) == (2, 0.01, 3)
    with pytest.raises(KdpipeError, match=r"IVLPConfig\.epochs: expected an integer, got 'many'"):
        build_method("ivlp", tiny_student, CLASSES, {"epochs": "many"})
    with pytest.raises(KdpipeError, match="at least one class"):
        build_method("coop", tiny_student, [])


@pytest.mark.parametrize("name", ["zeroshot", "coop", "maple"])
def test_large_label_sets_are_encoded_in_chunks_with_the_same_result(name, tiny_student, monkeypatch):
    import kdpipe.methods.prompts as prompts

    names = [f"thing {i}" for i in range(7)]
    m = build_method(name, tiny_student, names).eval()
    with torch.no_grad():
        whole = m.class_features().clone()
        monkeypatch.setattr(prompts, "TEXT_CHUNK", 2)
        m._text_cache.clear()
        assert torch.allclose(m.class_features(), whole, atol=1e-5)
