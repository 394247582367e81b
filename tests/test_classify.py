"""classify engine: sources, resumable writers, skipped images, refusals (tiny encoder, made-up images)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdpipe.errors import KdpipeError
from kdpipe.infer.classify import Encoder, classify
from kdpipe.infer.index import ClassIndex
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import meta_path, read_rows, skipped_path

CLASSES = ["red", "green", "blue", "yellow", "white", "black"]
COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 20), (245, 245, 245), (10, 10, 10)]


def write_images(root, n, sub=True):
    paths = []
    for i in range(n):
        folder = root / (f"set{i % 2}" if sub else "")
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (40, 36), COLORS[i % len(COLORS)])
        img.putpixel((i % 40, i % 36), (i * 7 % 256, 0, 0))  # every image distinct
        p = folder / f"img{i:03d}.{'png' if i % 3 else 'jpg'}"
        img.save(p)
        paths.append(p)
    return paths


class TinyEncoder:
    """kd-tiny-s vision tower + a fixed random projection; counts calls, can fail on purpose."""

    def __init__(self, backbone, dim=24, fail_on_call=None):
        g = torch.Generator().manual_seed(1)
        self.backbone = backbone
        self.proj = torch.randn(backbone.dims.embed_dim, dim, generator=g)
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.transform = backbone.preprocess_test
        self.model = {"id": "tiny-test-encoder", "name": "tiny"}

    def __call__(self, images):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("injected failure")
        return F.normalize(self.backbone.model.encode_image(images) @ self.proj, dim=-1)


@pytest.fixture()
def class_index():
    g = torch.Generator().manual_seed(2)
    return ClassIndex.build(F.normalize(torch.randn(len(CLASSES), 24, generator=g), dim=-1))


def keys_of(out):
    return [r.get("path", r.get("key")) for r in read_rows(out)]


def test_rows_equal_direct_encoding_and_search(tmp_path, tiny_student, class_index):
    paths = write_images(tmp_path / "imgs", 7)
    enc = TinyEncoder(tiny_student)
    out = tmp_path / "out.jsonl"
    s = classify(enc, class_index, CLASSES, open_source(tmp_path / "imgs"), out, top_k=3, batch_size=3, workers=0, device="cpu", progress=False)
    assert s.rows_new == 7 and s.rows_total == 7 and not s.skipped_total
    rows = {r["path"]: r for r in read_rows(out)}
    assert set(rows) == {p.relative_to(tmp_path / "imgs").as_posix() for p in paths}
    with torch.no_grad():
        for p in paths:
            feats = enc(enc.transform(Image.open(p).convert("RGB"))[None])
            scores, ids = (feats @ class_index.features.T).topk(3)
            row = rows[p.relative_to(tmp_path / "imgs").as_posix()]
            assert row["ids"] == ids[0].tolist()
            assert row["labels"] == [CLASSES[i] for i in ids[0].tolist()]
            assert row["scores"] == pytest.approx(scores[0].tolist(), abs=1e-5)
    meta = json.loads(meta_path(out).read_text())
    assert meta["model"]["id"] == "tiny-test-encoder" and meta["top_k"] == 3


def test_workers_decode_and_csv_output(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 9)
    out = tmp_path / "out.csv"
    enc = TinyEncoder(tiny_student)
    classify(enc, class_index, CLASSES, open_source(tmp_path / "imgs"), out, top_k=2, batch_size=4, workers=2, device="cpu", progress=False)
    rows = read_rows(out)
    assert len(rows) == 9 and set(rows[0]) == {"path", "label_1", "score_1", "prob_1", "id_1", "label_2", "score_2", "prob_2", "id_2"}
    assert all(r["label_1"] in CLASSES for r in rows)
    again = tmp_path / "again.jsonl"
    classify(enc, class_index, CLASSES, open_source(tmp_path / "imgs"), again, top_k=2, batch_size=5, workers=0, device="cpu", progress=False)
    by_path = {r["path"]: r for r in read_rows(again)}
    assert all(by_path[r["path"]]["labels"][0] == r["label_1"] for r in rows)  # same answers whatever the workers


def test_corrupt_and_zero_byte_images_are_skipped_and_listed(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 5, sub=False)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    out = tmp_path / "out.jsonl"
    s = classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), out, batch_size=2, workers=0, device="cpu", progress=False)
    assert sorted(keys_of(out)) == [f"img{i:03d}.{'png' if i % 3 else 'jpg'}" for i in range(5)]
    skipped = {json.loads(ln)["path"]: json.loads(ln)["reason"] for ln in skipped_path(out).read_text().splitlines()}
    assert set(skipped) == {"broken.jpg", "empty.png"}
    assert "0 bytes" in skipped["empty.png"] and "not a readable image" in skipped["broken.jpg"]
    assert s.skipped_total == 2 and any("skipped 2" in ln for ln in s.lines())
    # a re-run neither redoes nor re-lists anything
    s2 = classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), out, workers=0, device="cpu", progress=False)
    assert s2.rows_new == 0 and s2.resumed == 7 and len(skipped_path(out).read_text().splitlines()) == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_failure_mid_run_then_rerun_writes_every_image_once(tmp_path, tiny_student, class_index, suffix):
    write_images(tmp_path / "imgs", 11)
    out = tmp_path / f"out{suffix}"
    with pytest.raises(RuntimeError, match="injected"):
        classify(TinyEncoder(tiny_student, fail_on_call=3), class_index, CLASSES, open_source(tmp_path / "imgs"), out,
                 batch_size=2, workers=0, device="cpu", progress=False)
    assert len(keys_of(out)) == 4  # two whole batches made it
    enc = TinyEncoder(tiny_student)
    s = classify(enc, class_index, CLASSES, open_source(tmp_path / "imgs"), out, batch_size=2, workers=0, device="cpu", progress=False)
    keys = keys_of(out)
    assert len(keys) == len(set(keys)) == 11
    assert s.resumed == 4 and s.rows_new == 7 and enc.calls == 4  # only the missing images were encoded


def test_torn_last_row_is_cut_and_redone(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 6)
    out = tmp_path / "out.jsonl"
    classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), out, workers=0, device="cpu", progress=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:17])  # a kill in the middle of writing row 4
    classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), out, workers=0, device="cpu", progress=False)
    keys = keys_of(out)
    assert len(keys) == len(set(keys)) == 6


def test_sigkill_mid_run_then_rerun_writes_every_image_once(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 12)
    class_index.save(tmp_path / "classes.faiss")
    out = tmp_path / "out.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_classify import TinyEncoder, CLASSES
        from kdpipe.clip import load_backbone
        from kdpipe.infer.classify import classify
        from kdpipe.infer.index import ClassIndex
        from kdpipe.infer.sources import open_source
        torch.manual_seed(0)
        class Killer(TinyEncoder):
            def __call__(self, images):
                if self.calls == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().__call__(images)
        index = ClassIndex.load({str(tmp_path / "classes.faiss")!r})
        classify(Killer(load_backbone("kd-tiny-s")), index, CLASSES, open_source({str(tmp_path / "imgs")!r}),
                 {str(out)!r}, batch_size=2, workers=1, device="cpu", progress=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(keys_of(out)) == 6
    s = classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), out, batch_size=2, workers=0, device="cpu", progress=False)
    keys = keys_of(out)
    assert len(keys) == len(set(keys)) == 12 and s.resumed == 6


def test_output_of_another_model_is_refused_unless_overwrite(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 3)
    out = tmp_path / "out.jsonl"
    classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), out, workers=0, device="cpu", progress=False)
    other = TinyEncoder(tiny_student)
    other.model = {"id": "another-model", "name": "other"}
    with pytest.raises(KdpipeError, match="another model.*--overwrite") as e:
        classify(other, class_index, CLASSES, open_source(tmp_path / "imgs"), out, workers=0, device="cpu", progress=False)
    assert "\n" not in str(e.value)
    s = classify(other, class_index, CLASSES, open_source(tmp_path / "imgs"), out, workers=0, device="cpu", progress=False, overwrite=True)
    assert s.rows_new == 3 and json.loads(meta_path(out).read_text())["model"]["id"] == "another-model"
    with pytest.raises(KdpipeError, match="top-k 5"):
        classify(other, class_index, CLASSES, open_source(tmp_path / "imgs"), out, top_k=2, workers=0, device="cpu", progress=False)
    foreign = tmp_path / "mine.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(KdpipeError, match="not written by kdpipe"):
        classify(other, class_index, CLASSES, open_source(tmp_path / "imgs"), foreign, workers=0, device="cpu", progress=False)


def test_no_images_names_the_input(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(KdpipeError, match=f"no images found in {tmp_path / 'empty'}"):
        open_source(tmp_path / "empty")
    with pytest.raises(KdpipeError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "list.txt").write_text("# nothing\n\n")
    with pytest.raises(KdpipeError, match="list.txt: the list is empty"):
        open_source(tmp_path / "list.txt")


def test_list_files_txt_csv_jsonl(tmp_path, tiny_student, class_index):
    paths = write_images(tmp_path / "imgs", 4)
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    (tmp_path / "l.txt").write_text("\n".join(rel + [rel[0]]) + "\n")  # a duplicate is classified once
    (tmp_path / "l.csv").write_text("id,image\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rel)))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"path": str(tmp_path / r)}) + "\n" for r in rel))
    for name in ("l.txt", "l.csv", "l.jsonl"):
        out = tmp_path / f"{name}.out.jsonl"
        classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / name), out, workers=0, device="cpu", progress=False)
        assert len(keys_of(out)) == 4
    assert keys_of(tmp_path / "l.txt.out.jsonl") == rel
    (tmp_path / "bad.csv").write_text("name,label\na.jpg,1\n")
    with pytest.raises(KdpipeError, match="no path column"):
        open_source(tmp_path / "bad.csv")


def test_feature_dimension_mismatch_is_one_line(tmp_path, tiny_student):
    write_images(tmp_path / "imgs", 2)
    index = ClassIndex.build(F.normalize(torch.randn(len(CLASSES), 16), dim=-1))
    with pytest.raises(KdpipeError, match="dimension 24 but the class index has 16") as e:
        classify(TinyEncoder(tiny_student), index, CLASSES, open_source(tmp_path / "imgs"), tmp_path / "o.jsonl", workers=0, device="cpu", progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(KdpipeError, match="5 class names but the class index holds 6"):
        classify(TinyEncoder(tiny_student), index, CLASSES[:5], open_source(tmp_path / "imgs"), tmp_path / "o.jsonl", workers=0, device="cpu", progress=False)


def test_unknown_output_format(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 1)
    with pytest.raises(KdpipeError, match="unknown output format .txt"):
        classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(tmp_path / "imgs"), tmp_path / "o.txt", workers=0, device="cpu", progress=False)


def test_encoder_wrapper_carries_transform_and_identity(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 2)
    raw = TinyEncoder(tiny_student)
    enc = Encoder(fn=raw.__call__, transform=raw.transform, model={"id": "abc", "name": "wrapped"})
    classify(enc, class_index, CLASSES, open_source(tmp_path / "imgs"), tmp_path / "o.jsonl", workers=0, device="cpu", progress=True)
    assert json.loads(meta_path(tmp_path / "o.jsonl").read_text())["model"] == {"id": "abc", "name": "wrapped"}


def test_shard_input_with_a_corrupt_member_and_resume(tmp_path, tiny_student, class_index):
    import io
    import tarfile

    paths = write_images(tmp_path / "imgs", 6, sub=False)
    (tmp_path / "shards").mkdir()
    for s in range(2):
        with tarfile.open(tmp_path / "shards" / f"part-{s}.tar", "w") as tar:
            members = [(f"s{s}-{i}", p.suffix, p.read_bytes()) for i, p in enumerate(paths[3 * s: 3 * s + 3])]
            if s == 1:
                members.append(("s1-bad", ".jpg", b"garbage, not a jpeg"))
            for key, ext, data in members:
                info = tarfile.TarInfo(key + ext)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out.jsonl"
    for spec in (str(tmp_path / "shards" / "part-{0..1}.tar"), str(tmp_path / "shards")):
        s = classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(spec), out, batch_size=2, workers=0, device="cpu", progress=False)
        shard = str(tmp_path / "shards" / "part-{}.tar")
        assert sorted(keys_of(out)) == [f"{shard.format(s)}#s{s}-{i}" for s in range(2) for i in range(3)]
        skipped = [json.loads(ln) for ln in skipped_path(out).read_text().splitlines()]
        assert [r["key"] for r in skipped] == [f"{shard.format(1)}#s1-bad"]  # the same identity as a row
    assert s.rows_new == 0 and s.resumed == 7  # the second spec names the same shards: nothing redone
    with pytest.raises(KdpipeError, match="not found"):
        open_source(str(tmp_path / "shards" / "part-{0..5}.tar"))


def write_two_shard_sets(root, sizes=(5, 4), per_shard=3):
    """Two folders written by ``kdpipe shards write``: both start at key 00000000."""
    from kdpipe.data.shards import write_shards

    for name, n in zip("ab", sizes):
        paths = write_images(root / f"src-{name}", n, sub=False)
        write_shards([str(p) for p in paths], root / name, per_shard=per_shard, max_side=0)


@pytest.mark.parametrize("spec, images", [("{a,b}", 9), ("{a/shard-000000.tar,b/shard-000000.tar}", 6)])
def test_shard_sets_with_the_same_keys_keep_every_image(tmp_path, tiny_student, class_index, spec, images):
    from kdpipe.data.shards import expand_pattern

    write_two_shard_sets(tmp_path)  # a: 3 + 2 images, b: 3 + 1
    spec = str(tmp_path / spec)
    urls = expand_pattern(spec)
    out = tmp_path / "out.jsonl"
    s = classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(spec), out, batch_size=2, workers=0, device="cpu", progress=False)
    keys = keys_of(out)
    assert s.rows_new == len(keys) == len(set(keys)) == images
    assert {k.rsplit("#", 1)[0] for k in keys} == set(urls)  # the shard and the sample's key in it
    s = classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(spec), out, batch_size=2, workers=0, device="cpu", progress=False)
    assert s.rows_new == 0 and s.resumed == images and len(keys_of(out)) == images


def test_images_that_share_a_key_fail_the_run_instead_of_vanishing(tmp_path, tiny_student, class_index):
    from kdpipe.infer.sources import Batch, ImageSource

    class SameKeys(ImageSource):
        def describe(self):
            return "two images under one key"

        def batches(self, transform, batch_size, workers, done, pin_memory=False, rank=0, world=1):
            image = transform(Image.new("RGB", (40, 36), COLORS[0]))[None]
            yield Batch(image, ["k"])
            yield Batch(image, ["k"], [("bad", "unreadable")])

    with pytest.raises(KdpipeError, match="3 images read but 2 written") as e:
        classify(TinyEncoder(tiny_student), class_index, CLASSES, SameKeys("x"), tmp_path / "o.jsonl", workers=0, device="cpu", progress=False)
    assert "\n" not in str(e.value)


def test_writer_keeps_one_row_per_key_even_within_a_batch(tmp_path):
    from kdpipe.infer.writers import ResultWriter, Row

    w = ResultWriter(tmp_path / "o.jsonl", key_column="key", top_k=1, model={"id": "m"})
    w.append([Row("a", ["x"], [0.5], [0]), Row("a", ["y"], [0.4], [1]), Row("b", ["x"], [0.3], [0])], [("b", "dup"), ("c", "bad")])
    w.append([Row("b", ["x"], [0.3], [0])], [("c", "bad")])
    assert keys_of(tmp_path / "o.jsonl") == ["a", "b"]
    assert [json.loads(ln)["key"] for ln in skipped_path(tmp_path / "o.jsonl").read_text().splitlines()] == ["c"]


RANK_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_classify import TinyEncoder, CLASSES
from kdpipe.clip import load_backbone
from kdpipe.infer.classify import classify
from kdpipe.infer.index import ClassIndex
from kdpipe.infer.sources import open_source
torch.manual_seed(0)
backbone = load_backbone("kd-tiny-s")
enc = TinyEncoder(backbone)
enc.model = {{"id": {model_id!r}}}
s = classify(enc, ClassIndex.load({index!r}), CLASSES, open_source({images!r}), {out!r},
             batch_size=2, workers=0, device="cpu", progress=False)
print("rows_new", s.rows_new, "rows_total", s.rows_total, "resumed", s.resumed)
"""


def run_ranks(script, world=2, expect_rc=0):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert (p.returncode == 0) == (expect_rc == 0), e[-3000:]
    return [o + e for o, e in outs]


def test_two_processes_under_torchrun_write_what_one_process_writes(tmp_path, class_index):
    from kdpipe.clip import load_backbone

    write_images(tmp_path / "imgs", 11)
    (tmp_path / "imgs" / "set1" / "empty.png").write_bytes(b"")
    class_index.save(tmp_path / "classes.faiss")
    torch.manual_seed(0)
    backbone = load_backbone("kd-tiny-s")
    classify(TinyEncoder(backbone), class_index, CLASSES, open_source(tmp_path / "imgs"), tmp_path / "one.jsonl",
             batch_size=2, workers=0, device="cpu", progress=False)
    script = RANK_SCRIPT.format(tests=os.path.dirname(__file__), index=str(tmp_path / "classes.faiss"),
                                images=str(tmp_path / "imgs"), out=str(tmp_path / "two.jsonl"), model_id="tiny-test-encoder")
    outs = run_ranks(script)
    assert "rows_new 11 rows_total 11" in outs[0]
    one = {r["path"]: r for r in read_rows(tmp_path / "one.jsonl")}
    two = read_rows(tmp_path / "two.jsonl")
    assert len(two) == 11 and {r["path"]: r for r in two} == one
    assert skipped_path(tmp_path / "two.jsonl").read_text().count("empty.png") == 1
    assert not (tmp_path / "two.jsonl.ranks").exists()
    # a killed multi-process run leaves its parts (one torn row at the end): the next run merges them once
    (tmp_path / "two.jsonl.ranks").mkdir()
    lines = (tmp_path / "two.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "two.jsonl").write_text("".join(lines[:5]))
    (tmp_path / "two.jsonl.ranks" / "rank-1.jsonl").write_text("".join(lines[3:8]) + lines[8][:20])
    outs = run_ranks(script)
    assert "resumed 9" in outs[0]  # rows 0-7 (two of them in both files) and the skipped image
    two = read_rows(tmp_path / "two.jsonl")
    assert len(two) == 11 and {r["path"]: r for r in two} == one
    # a refusal on rank 0 (another model's output) stops every process instead of leaving one waiting
    outs = run_ranks(script.replace("'tiny-test-encoder'", "'other-model'"), expect_rc=1)
    assert "written by another model" in outs[0] and "another classify process failed" in outs[1]
