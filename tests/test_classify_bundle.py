"""Bundles: export, move, load without anything else, classify identically; refusals; open vocabulary."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from kdpipe.artefacts.class_features import read_class_features, write_class_features
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import FEATURES_FILE, ClassModel, export_bundle, load_bundle
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


@pytest.fixture()
def model(tiny_student, tiny_teacher):
    teacher = make_teacher(tiny_teacher)
    with torch.no_grad():
        feats = F.normalize(teacher.class_features(CLASSES).float(), dim=-1)
    return ClassModel(make_student(tiny_student), CLASSES, feats, 100.0, 3, source="test model",
                      provenance={"backbone": "kd-tiny-s"}, teacher_loader=lambda: teacher)


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
    cf = read_class_features(tmp_path / "b" / FEATURES_FILE)
    cf.features = F.normalize(torch.randn(len(CLASSES), 40), dim=-1)
    write_class_features(tmp_path / "b" / FEATURES_FILE, cf)
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
    import kdpipe.infer.index as index_mod

    export_bundle(model, tmp_path / "b")
    write_images(tmp_path / "imgs", 3)
    run(load_bundle(tmp_path / "b"), tmp_path / "imgs", tmp_path / "with.jsonl")
    monkeypatch.setattr(index_mod, "faiss_module", lambda: None)
    loaded = load_bundle(tmp_path / "b")
    assert loaded.index().flat_backends() == ["torch"]
    run(loaded, tmp_path / "imgs", tmp_path / "without.jsonl")
    assert read_rows(tmp_path / "with.jsonl") == read_rows(tmp_path / "without.jsonl")
    with pytest.raises(KdpipeError, match="--index ivf needs FAISS"):
        loaded.index("ivf")
