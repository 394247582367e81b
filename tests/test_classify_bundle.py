"""Bundles: export, move, load without anything else, classify identically; refusals; open vocabulary."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from kdpipe.artefacts.class_features import read_class_features, write_class_features
from kdpipe.errors import KdpipeError
from kdpipe.artefacts.class_features import IN_BUNDLE
from kdpipe.infer.bundle import ClassModel, export_bundle, load_bundle
from kdpipe.infer.classify import classify
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import read_rows
from test_classify import CLASSES, write_images

STUDENT_CFG = {"n_ctx": 2, "depth": 2, "teacher_dim": 48}


def make_student(backbone, seed=0):
    from kdpipe.methods import build_method

    torch.manual_seed(seed)
    student = build_method("promptkd", backbone, CLASSES, overrides=STUDENT_CFG)
    with torch.no_grad():  # trained-looking state: BatchNorm statistics away from their defaults
        for name, p in student.named_parameters():
            if not name.startswith("clip."):
                p.add_(0.05 * torch.randn_like(p))
        bn = student.projector[1]
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return student.eval()


def make_teacher(backbone):
    from kdpipe.methods import build_method

    torch.manual_seed(1)
    return build_method("coop", backbone, CLASSES, overrides={"n_ctx": 2}).eval()


def make_model(tiny_student, tiny_teacher) -> ClassModel:
    """The tiny student scoring against its coop teacher's class features, teacher text side included."""
    teacher = make_teacher(tiny_teacher)
    with torch.no_grad():
        feats = F.normalize(teacher.class_features(CLASSES).float(), dim=-1)
    return ClassModel(make_student(tiny_student), CLASSES, feats, 100.0, 3, source="test model",
                      provenance={"backbone": "kd-tiny-s"}, teacher_loader=lambda: teacher)


@pytest.fixture()
def model(tiny_student, tiny_teacher):
    return make_model(tiny_student, tiny_teacher)


def run(cm, folder, out, **kw):
    return classify(cm.encoder(), cm.index(kw.pop("index", None)), cm.classnames, open_source(folder), out,
                    top_k=3, batch_size=4, workers=0, device="cpu", progress=False, **kw)


def test_moved_bundle_classifies_identically(tmp_path, model):
    write_images(tmp_path / "imgs", 7)
    run(model, tmp_path / "imgs", tmp_path / "direct.jsonl")
    export_bundle(model, tmp_path / "a" / "bundle")
    shutil.move(str(tmp_path / "a" / "bundle"), str(tmp_path / "elsewhere"))
    shutil.rmtree(tmp_path / "a")
    info = json.loads((tmp_path / "elsewhere" / "bundle.json").read_text())
    assert info["method"] == "promptkd" and info["classes"]["names"] == CLASSES and info["preprocess"]["image_size"] == 32
    assert info["kdpipe_version"] and info["backbone"]["spec"] == "kd-tiny-s"
    assert {p.name for p in (tmp_path / "elsewhere").iterdir()} == {
        "bundle.json", "backbone.safetensors", "method.safetensors", "class_features.safetensors", "classes.index", "classes.index.json"}
    loaded = load_bundle(tmp_path / "elsewhere")
    assert loaded.identity()["id"] == model.identity()["id"] == info["model"]["id"]
    run(loaded, tmp_path / "imgs", tmp_path / "bundle.jsonl")
    direct, bundled = read_rows(tmp_path / "direct.jsonl"), read_rows(tmp_path / "bundle.jsonl")
    assert [r["ids"] for r in direct] == [r["ids"] for r in bundled]
    assert [r["scores"] for r in direct] == [r["scores"] for r in bundled]
    # the same model resumes the other's output: identity survives the export
    s = run(loaded, tmp_path / "imgs", tmp_path / "direct.jsonl")
    assert s.rows_new == 0 and s.resumed == 7


def test_classify_equals_the_students_own_logits(tmp_path, model):
    """What evaluate computes for the student (logits against the stored class features) ranks the same."""
    from PIL import Image

    paths = write_images(tmp_path / "imgs", 6)
    run(model, tmp_path / "imgs", tmp_path / "o.jsonl")
    rows = {r["path"]: r["ids"][0] for r in read_rows(tmp_path / "o.jsonl")}
    tf = model.transform()
    images = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        logits = model.method.logits(images, class_features=model.class_features)
    assert [rows[p.relative_to(tmp_path / "imgs").as_posix()] for p in paths] == logits.argmax(-1).tolist()


def test_bundle_feature_dimension_mismatch_is_refused(tmp_path, model):
    export_bundle(model, tmp_path / "b")
    cf = read_class_features(tmp_path / "b" / IN_BUNDLE)
    cf.features = F.normalize(torch.randn(len(CLASSES), 40), dim=-1)
    write_class_features(tmp_path / "b" / IN_BUNDLE, cf)
    with pytest.raises(KdpipeError, match="dimension 40 but the promptkd image encoder \\(projector\\) outputs 48") as e:
        load_bundle(tmp_path / "b")
    assert "\n" not in str(e.value)


def test_export_refuses_existing_and_bad_folders(tmp_path, model):
    export_bundle(model, tmp_path / "b")
    with pytest.raises(KdpipeError, match="already exists.*--overwrite"):
        export_bundle(model, tmp_path / "b")
    export_bundle(model, tmp_path / "b", overwrite=True, index_kind="hnsw")
    assert load_bundle(tmp_path / "b").index().kind == "hnsw"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(KdpipeError, match="not a kdpipe bundle"):
        load_bundle(tmp_path)
    (tmp_path / "b" / "method.safetensors").unlink()
    with pytest.raises(KdpipeError, match="incomplete: method.safetensors is missing"):
        load_bundle(tmp_path / "b")


def test_open_vocabulary_classes(tmp_path, model, tiny_teacher):
    export_bundle(model, tmp_path / "plain")
    plain = load_bundle(tmp_path / "plain")
    sub = plain.with_classes(["blue", "red"])  # known names: stored rows, no text encoder needed
    assert sub.classnames == ["blue", "red"]
    assert torch.equal(sub.class_features, plain.class_features[[2, 0]])
    assert sub.identity()["id"] != plain.identity()["id"]
    with pytest.raises(KdpipeError, match="carries no teacher text encoder.*purple"):
        plain.with_classes(["red", "purple"])
    export_bundle(model, tmp_path / "with-teacher", with_teacher_text=True)
    assert (tmp_path / "with-teacher" / "teacher" / "method.safetensors").is_file()
    opened = load_bundle(tmp_path / "with-teacher").with_classes(["red", "purple", "orange"])
    with torch.no_grad():
        expected = F.normalize(make_teacher(tiny_teacher).class_features(["red", "purple", "orange"]).float(), dim=-1)
    assert torch.allclose(opened.class_features, expected, atol=1e-6)
    write_images(tmp_path / "imgs", 3)
    s = run(opened, tmp_path / "imgs", tmp_path / "o.jsonl")
    assert s.rows_new == 3 and all(set(r["labels"]) <= {"red", "purple", "orange"} for r in read_rows(tmp_path / "o.jsonl"))


def test_bundle_with_a_faiss_index_loads_where_faiss_is_missing(tmp_path, model, monkeypatch):
    import kdpipe.infer.index.faiss_kinds as faiss_kinds

    export_bundle(model, tmp_path / "b")
    write_images(tmp_path / "imgs", 3)
    run(load_bundle(tmp_path / "b"), tmp_path / "imgs", tmp_path / "with.jsonl")
    monkeypatch.setattr(faiss_kinds, "faiss_module", lambda: None)
    loaded = load_bundle(tmp_path / "b")
    assert loaded.index().flat_backends() == ["torch"]
    run(loaded, tmp_path / "imgs", tmp_path / "without.jsonl")
    assert read_rows(tmp_path / "with.jsonl") == read_rows(tmp_path / "without.jsonl")
    with pytest.raises(KdpipeError, match="--index ivf needs FAISS"):
        loaded.index("ivf")


def make_local_dir(folder, mean=(0.25, 0.5, 0.75), std=(0.2, 0.3, 0.4)):
    """An open_clip ``local-dir:`` model folder (config + weights), with its own normalisation."""
    import open_clip
    from safetensors.torch import save_file

    from kdpipe.clip.backbones import model_config

    folder.mkdir(parents=True)
    cfg = {"model_cfg": model_config("kd-tiny-s"), "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(5)
    state = open_clip.create_model("kd-tiny-s").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def test_local_dir_bundle_needs_nothing_but_itself(tmp_path, tiny_teacher, caplog):
    """A bundle made on a local-dir: backbone loads and classifies identically once that folder is gone."""
    import logging

    from kdpipe.clip import load_backbone

    spec = make_local_dir(tmp_path / "clip")
    backbone = load_backbone(spec)
    assert backbone.mean == (0.25, 0.5, 0.75)
    with torch.no_grad():
        feats = F.normalize(make_teacher(tiny_teacher).class_features(CLASSES).float(), dim=-1)
    cm = ClassModel(make_student(backbone), CLASSES, feats, 100.0, 3, source="local-dir model", provenance={"backbone": spec})
    write_images(tmp_path / "imgs", 5)
    run(cm, tmp_path / "imgs", tmp_path / "direct.jsonl")
    export_bundle(cm, tmp_path / "bundle")
    shutil.rmtree(tmp_path / "clip")
    with caplog.at_level(logging.WARNING):
        loaded = load_bundle(tmp_path / "bundle")
    assert not [r for r in caplog.records if "Ignoring" in r.getMessage()]
    assert loaded.preprocess() == cm.preprocess() and loaded.identity()["id"] == cm.identity()["id"]
    run(loaded, tmp_path / "imgs", tmp_path / "bundle.jsonl")
    direct, bundled = read_rows(tmp_path / "direct.jsonl"), read_rows(tmp_path / "bundle.jsonl")
    assert [(r["ids"], r["scores"]) for r in direct] == [(r["ids"], r["scores"]) for r in bundled]


def test_student_bundle_leaves_the_text_tower_out(tmp_path, model):
    """The student never encodes text: its bundle holds the vision tower only, and predicts the same."""
    from safetensors import safe_open

    from kdpipe.clip.backbones import tower_of

    write_images(tmp_path / "imgs", 5)
    run(model, tmp_path / "imgs", tmp_path / "direct.jsonl")
    export_bundle(model, tmp_path / "b")
    full = sum(v.numel() for v in model.method.backbone.model.state_dict().values())
    with safe_open(str(tmp_path / "b" / "backbone.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        saved = sum(f.get_tensor(k).numel() for k in keys)
    assert keys and not [k for k in keys if tower_of(k) == "text"]
    assert any(k.startswith("visual.") for k in keys) and "logit_scale" in keys
    assert saved < 0.5 * full  # kd-tiny-s: the text tower (token embedding) is most of the weights
    loaded = load_bundle(tmp_path / "b")
    run(loaded, tmp_path / "imgs", tmp_path / "bundle.jsonl")
    direct, bundled = read_rows(tmp_path / "direct.jsonl"), read_rows(tmp_path / "bundle.jsonl")
    assert [(r["ids"], r["scores"]) for r in direct] == [(r["ids"], r["scores"]) for r in bundled]
    text = [p for n, p in loaded.method.backbone.model.named_parameters() if tower_of(n) == "text"]
    assert text and all(torch.isnan(p).all() for p in text)  # never silently random text features


def test_bundle_backbone_missing_other_keys_is_refused(tmp_path, model):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    export_bundle(model, tmp_path / "b")
    path = tmp_path / "b" / "backbone.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    del state["visual.proj"]
    save_file(state, str(path), metadata=meta)
    with pytest.raises(KdpipeError, match="visual.proj") as e:
        load_bundle(tmp_path / "b")
    assert "\n" not in str(e.value)
