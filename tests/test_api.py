"""The Python API: ``kdpipe.load_bundle`` -> predict / embed, ``kdpipe.run``, the README example, a light import."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import kdpipe
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import export_bundle
from kdpipe.infer.precision import resolve
from test_classify import CLASSES, write_images
from test_classify_bundle import model  # noqa: F401  (fixture: a tiny student ClassModel)

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture()
def bundle(tmp_path, model):  # noqa: F811
    return export_bundle(model, tmp_path / "bundle")


def readme_example() -> str:
    """The ```python block of README's "Classify offline, export" section."""
    # up to the next heading of any level: the "At scale with Ray Data" subsection has its own example
    section = re.split(r"\n#{2,4} ", README.read_text().split("### Classify offline, export", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected one python example in the section"
    return blocks[0]


def test_readme_example_runs(tmp_path, bundle, monkeypatch, capsys):
    shutil.move(str(bundle), str(tmp_path / "pets-student"))
    for name, colour in (("cat.jpg", (220, 30, 30)), ("dog.jpg", (30, 30, 220))):
        Image.new("RGB", (40, 36), colour).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.split()[0] in CLASSES for line in printed)
    assert namespace["emb"].shape == (1, 48)


def test_predict_is_softmax_over_all_classes_and_inputs_agree(tmp_path, bundle, model):  # noqa: F811
    paths = write_images(tmp_path / "imgs", 5)
    m = kdpipe.load_bundle(bundle)
    assert isinstance(m, kdpipe.Model) and m.classnames == CLASSES
    batch = torch.stack([m.transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():  # the bundle's logit_scale (stored with its class features) times cosine
        cosine = model.method.encode_images(batch) @ model.class_features.t()
        expected = torch.softmax(model.logit_scale * cosine, dim=-1)
    preds = m.predict(paths, top_k=3)
    assert [type(p) for p in preds] == [kdpipe.Prediction] * 5
    for p, row in zip(preds, expected):
        top = row.topk(3)
        assert p.ids == top.indices.tolist() and p.labels == [CLASSES[i] for i in p.ids]
        assert p.probs == pytest.approx(top.values.tolist(), abs=1e-6)
    assert m.probabilities(paths).sum(-1).tolist() == pytest.approx([1.0] * 5)
    # paths, PIL images, one path, a preprocessed batch, small batches: the same answers
    assert m.predict([Image.open(p) for p in paths], top_k=3) == preds
    one, = m.predict(str(paths[0]), top_k=3)  # a batch of one: the same up to float rounding
    assert one.ids == preds[0].ids and one.probs == pytest.approx(preds[0].probs, abs=1e-6)
    assert [p.ids for p in m.predict(batch, top_k=3, batch_size=2)] == [p.ids for p in preds]
    assert len(m.predict(paths, top_k=99)[0].ids) == len(CLASSES)


def test_embed_gives_unit_rows_in_the_class_feature_space(tmp_path, bundle, model):  # noqa: F811
    paths = write_images(tmp_path / "imgs", 3)
    m = kdpipe.load_bundle(bundle)
    emb = m.embed(paths)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == (3, model.dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb, m.embed(torch.stack([m.transform(Image.open(p)) for p in paths])), atol=1e-6)


def test_load_bundle_runs_the_precision_asked_and_returns_fp32(tmp_path, bundle):
    paths = write_images(tmp_path / "imgs", 4)
    exact = kdpipe.load_bundle(bundle).embed(paths)
    assert kdpipe.load_bundle(bundle).precision == "fp32"  # the library's default: exactly as trained
    assert kdpipe.load_bundle(bundle, precision="auto").precision == resolve("auto", "cpu")  # bf16 where the CPU has bf16
    for name in ("bf16", "int8"):
        m = kdpipe.load_bundle(bundle, precision=name)
        assert m.precision == name
        emb = m.embed(paths)
        assert emb.dtype == torch.float32 and not torch.equal(emb, exact)  # it did run in another precision
        assert torch.nn.functional.cosine_similarity(emb, exact).min() > 0.98
    with pytest.raises(KdpipeError, match="unknown precision"):
        kdpipe.load_bundle(bundle, precision="fp8")


def test_bad_inputs_are_one_line(tmp_path, bundle):
    m = kdpipe.load_bundle(bundle)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    cases = [
        (lambda: m.predict(torch.zeros(2, 3, 16, 16)), r"\[N, 3, 32, 32\] already preprocessed"),
        (lambda: m.predict(tmp_path / "nope.jpg"), "does not exist"),
        (lambda: m.predict(tmp_path / "broken.jpg"), "cannot read image"),
        (lambda: m.predict([]), "no images given"),
        (lambda: m.predict([3]), "PIL image or a file path, got int"),
        (lambda: m.predict(torch.zeros(1, 3, 32, 32), top_k=0), "top_k must be at least 1"),
        (lambda: kdpipe.load_bundle(tmp_path), "not a kdpipe bundle"),
    ]
    for call, message in cases:
        with pytest.raises(KdpipeError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_import_kdpipe_stays_light():
    code = ("import sys, kdpipe; assert 'torch' not in sys.modules and 'open_clip' not in sys.modules; "
            "assert {'load_bundle', 'run', 'Model', 'Prediction'} <= set(kdpipe.__all__) <= set(dir(kdpipe)); "
            "print(kdpipe.load_bundle.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "kdpipe.api"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kdpipe.nope  # noqa: B018


def test_run_resolves_settings_and_remembers_them(tmp_path):
    """kdpipe.run on the toy graph (a subprocess, so its stages stay out of this registry)."""
    from test_runner_toy_graph import TOY_SOURCE

    stages = tmp_path / "toy_api.py"
    stages.write_text(TOY_SOURCE + "\nfrom kdpipe.pipeline import GRAPH\n\nbuild(GRAPH)\n")
    (tmp_path / "toy.toml").write_text("[toy]\nb = 0.25\nsteps = 4\n")
    code = (
        "import kdpipe\n"
        "r = kdpipe.run('all', run_dir='rd', recipe='toy.toml', settings={'toy.a': 3})\n"
        "print(sorted(r.ran))\n"
        "print(kdpipe.run(run_dir='rd').ran)\n"
    )
    env = dict(os.environ, KDPIPE_STAGE_MODULES=str(stages), CI="true")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert "prep" in first and "train" in first and second == "[]"
    assert json.loads((tmp_path / "rd" / "prep" / "prep.json").read_text()) == {"a": 3}
    saved = json.loads((tmp_path / "rd" / "run.json").read_text())
    assert saved["overrides"] == {"toy.a": 3} and saved["recipe"] == "toy.toml"
