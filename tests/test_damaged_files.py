"""Damaged or wrong files a user hands kdpipe: one KdpipeError line naming the file and what to do, never a traceback."""

import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import export_bundle, load_bundle

TENSOR_FILES = ("backbone.safetensors", "method.safetensors", "class_features.safetensors")


def _text(path):
    path.write_text("this is not a model\n")


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header_only(path):
    data = path.read_bytes()
    path.write_bytes(data[:5])


def _pickle(path):
    torch.save({"features": torch.zeros(3, 4)}, path)  # what torch.save writes: a pickle in a zip


DAMAGE = {"text": _text, "truncated": _truncated, "header": _header_only, "pickle": _pickle}


def one_line(e) -> str:
    msg = str(e.value)
    assert type(e.value) is KdpipeError and msg and "\n" not in msg, repr(msg)
    return msg


@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory, tiny_student, tiny_teacher):
    from test_classify_bundle import make_model

    cm = make_model(tiny_student, tiny_teacher)
    out = tmp_path_factory.mktemp("bundles") / "src"
    export_bundle(cm, out, index_kind="flat", with_teacher_text=True)
    return out


@pytest.fixture()
def bundle(tmp_path, bundle_src):
    return shutil.copytree(bundle_src, tmp_path / "bundle")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", TENSOR_FILES)
def test_damaged_bundle_tensor_file_is_one_line(bundle, name, damage):
    DAMAGE[damage](bundle / name)
    with pytest.raises(KdpipeError) as e:
        load_bundle(bundle)
    msg = one_line(e)
    assert f"bundle {bundle}" in msg and f"file {name} is damaged" in msg and "re-export the bundle" in msg
    if damage == "pickle":
        assert "never unpickles" in msg


def test_damaged_teacher_file_is_one_line_when_used(bundle):
    _truncated(bundle / "teacher" / "backbone.safetensors")
    cm = load_bundle(bundle)  # the teacher is read only for new class names
    with pytest.raises(KdpipeError) as e:
        cm.with_classes(["a brand new class"])
    msg = one_line(e)
    assert "file teacher/backbone.safetensors is damaged" in msg and "re-export the bundle" in msg


def _garbage_index(path):
    path.write_bytes(b"hello, I am not a FAISS index" * 4)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_bundle_index_is_one_line(bundle, damage):
    index = bundle / "classes.index"
    {"garbage": _garbage_index, "truncated": _truncated, "empty": lambda p: p.write_bytes(b"")}[damage](index)
    cm = load_bundle(bundle)
    with pytest.raises(KdpipeError) as e:
        cm.index()
    msg = one_line(e)
    assert f"bundle {bundle}" in msg and "file classes.index is damaged" in msg and "re-export the bundle" in msg
    assert "index_read.cpp" not in msg  # FAISS's C++ location is no use to a user


def test_damaged_index_alone_names_the_file(tmp_path):
    from kdpipe.infer.index import ClassIndex

    path = ClassIndex.build(torch.nn.functional.normalize(torch.randn(6, 4), dim=-1), "flat").save(tmp_path / "c.index")
    _truncated(path)
    with pytest.raises(KdpipeError) as e:
        ClassIndex.load(path)
    assert str(path) in one_line(e)


def test_damaged_bundle_through_the_cli_is_one_error_line(bundle, tmp_path):
    from test_classify import write_images

    _text(bundle / "backbone.safetensors")
    write_images(tmp_path / "imgs", 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdpipe", "classify", "--model", str(bundle), "--input", str(tmp_path / "imgs"),
                           "--out", str(tmp_path / "o.jsonl")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:") or "Traceback" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"error: bundle {bundle}: file backbone.safetensors is damaged"), proc.stderr


@pytest.mark.parametrize("damage", ["text", "truncated", "pickle"])
def test_damaged_safetensors_backbone_spec_is_one_line(tmp_path, tiny_student, damage):
    from kdpipe.clip import load_backbone, save_backbone
    from kdpipe.clip.backbones import spec_activation

    path = save_backbone(tiny_student.model, tiny_student.arch, tmp_path / "x.safetensors")
    DAMAGE[damage](path)
    for load in (load_backbone, spec_activation):
        with pytest.raises(KdpipeError) as e:
            load(str(path))
        msg = one_line(e)
        assert str(path) in msg and "safetensors" in msg


def test_read_tensors_names_the_damaged_file(tmp_path):
    from kdpipe.io import read_tensors, write_tensors

    path = write_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(50)})
    _truncated(path)
    with pytest.raises(KdpipeError) as e:
        read_tensors(path)
    assert str(path) in one_line(e)
    _pickle(path)
    with pytest.raises(KdpipeError) as e:
        read_tensors(path)
    assert "never unpickles" in one_line(e)


class _Payload:
    """Unpickling this would create ``marker``: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_arch_path_of_a_non_checkpoint_is_one_line(tmp_path):
    from kdpipe.clip import load_backbone

    txt = tmp_path / "notamodel.txt"
    txt.write_text("hello, not a model\n")
    with pytest.raises(KdpipeError) as e:
        load_backbone(f"kd-tiny-s:{txt}")
    msg = one_line(e)
    assert str(txt) in msg and "not a weights-only checkpoint" in msg and "safetensors" in msg


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_arch_path_of_a_pickle_payload_is_refused_in_one_line(tmp_path, how):
    from kdpipe.clip import load_backbone

    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    payload = {"visual.proj": _Payload(marker)}
    if how == "pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    with pytest.raises(KdpipeError) as e:
        load_backbone(f"kd-tiny-s:{evil}")
    msg = one_line(e)
    assert str(evil) in msg and "not a weights-only checkpoint" in msg and "never unpickles" in msg
    assert not marker.exists()


def test_arch_path_of_a_damaged_safetensors_is_one_line(tmp_path, tiny_student):
    from kdpipe.clip import load_backbone
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_student.model.state_dict().items()}, str(path))
    assert load_backbone(f"kd-tiny-s:{path}").arch == "kd-tiny-s"  # the intact file loads
    _truncated(path)
    with pytest.raises(KdpipeError) as e:
        load_backbone(f"kd-tiny-s:{path}")
    assert str(path) in one_line(e)
