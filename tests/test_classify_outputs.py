"""classify outputs a FAISS / clip-retrieval user expects: probs, embeddings, --keep-meta, --parts."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.infer.classify import classify
from kdpipe.infer.embeddings import read_embeddings
from kdpipe.infer.index import ClassIndex
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import meta_path, part_path, read_rows
from test_classify import CLASSES, TinyEncoder, class_index, keys_of, write_images  # noqa: F401  (fixture)

KW = {"batch_size": 3, "workers": 0, "device": "cpu", "progress": False}


def run(enc, index, src, out, **kw):
    return classify(enc, index, CLASSES, open_source(src), out, **{**KW, **kw})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_probs_are_the_softmax_over_all_classes(tmp_path, tiny_student, class_index, suffix):
    write_images(tmp_path / "imgs", 5)
    enc = TinyEncoder(tiny_student)
    out = tmp_path / f"o{suffix}"
    run(enc, class_index, tmp_path / "imgs", out, top_k=2, logit_scale=20.0)
    rows = read_rows(out)
    assert len(rows) == 5
    for r in rows:
        probs = r["probs"] if suffix != ".csv" else [float(r["prob_1"]), float(r["prob_2"])]
        scores = r["scores"] if suffix != ".csv" else [float(r["score_1"]), float(r["score_2"])]
        assert len(probs) == 2
        ratio = probs[0] / probs[1]  # softmax: the ratio of two probs is exp(scale * score difference)
        assert ratio == pytest.approx(np.exp(20.0 * (scores[0] - scores[1])), rel=1e-4)
        assert 0 < probs[1] <= probs[0] < 1
    # all classes at once: the probs sum to 1
    out = tmp_path / f"all{suffix}"
    run(enc, class_index, tmp_path / "imgs", out, top_k=len(CLASSES), logit_scale=20.0)
    for r in read_rows(out):
        probs = r["probs"] if suffix != ".csv" else [float(r[f"prob_{i}"]) for i in range(1, len(CLASSES) + 1)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_approximate_index_gives_the_exact_probs(tmp_path, tiny_student):
    feats = torch.nn.functional.normalize(torch.randn(300, 24, generator=torch.Generator().manual_seed(3)), dim=-1)
    names = [f"c{i}" for i in range(300)]
    write_images(tmp_path / "imgs", 4)
    enc = TinyEncoder(tiny_student)
    for kind in ("flat", "HNSW8"):
        classify(enc, ClassIndex.build(feats, kind), names, open_source(tmp_path / "imgs"), tmp_path / f"{kind}.jsonl", top_k=3, **KW)
    assert read_rows(tmp_path / "flat.jsonl") == read_rows(tmp_path / "HNSW8.jsonl")


def test_output_of_an_older_kdpipe_is_refused_in_one_line(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 3)
    out = tmp_path / "o.jsonl"
    run(TinyEncoder(tiny_student), class_index, tmp_path / "imgs", out)
    meta = json.loads(meta_path(out).read_text())
    del meta["columns"]  # what kdpipe wrote before probs
    meta_path(out).write_text(json.dumps(meta))
    with pytest.raises(KdpipeError, match="written by an older kdpipe.*use --overwrite") as e:
        run(TinyEncoder(tiny_student), class_index, tmp_path / "imgs", out)
    assert "\n" not in str(e.value)
    assert run(TinyEncoder(tiny_student), class_index, tmp_path / "imgs", out, overwrite=True).rows_new == 3


def test_embeddings_match_the_rows_and_resume(tmp_path, tiny_student, class_index):
    write_images(tmp_path / "imgs", 8)
    out, emb = tmp_path / "o.jsonl", tmp_path / "emb"
    enc = TinyEncoder(tiny_student)
    run(enc, class_index, tmp_path / "imgs", out, embeddings=emb)
    keys, vecs = read_embeddings(emb)
    assert sorted(keys) == sorted(keys_of(out)) and vecs.dtype == np.float16 and vecs.shape == (8, 24)
    assert np.allclose(np.linalg.norm(vecs.astype(np.float32), axis=1), 1, atol=2e-3)
    assert [p.name for p in sorted(emb.iterdir())] == ["embeddings.json", "part-00000.keys.txt", "part-00000.npy"]
    # the embedding of each key is the encoder's output for that image
    first = open_source(tmp_path / "imgs").entries[0]
    from PIL import Image

    with torch.no_grad():
        direct = enc(enc.transform(Image.open(first[1]).convert("RGB"))[None])[0].numpy()
    assert np.allclose(vecs[keys.index(first[0])].astype(np.float32), direct, atol=2e-3)
    # a kill lost the embeddings chunk: the rows stay, the embeddings are made again, nothing twice
    for p in emb.glob("part-*"):
        p.unlink()
    enc2 = TinyEncoder(tiny_student)
    s = run(enc2, class_index, tmp_path / "imgs", out, embeddings=emb)
    assert s.rows_new == 0 and enc2.calls == 3 and len(keys_of(out)) == 8
    keys2, _ = read_embeddings(emb)
    assert sorted(keys2) == sorted(keys)
    enc3 = TinyEncoder(tiny_student)
    run(enc3, class_index, tmp_path / "imgs", out, embeddings=emb)  # all done: nothing encoded
    assert enc3.calls == 0
    other = TinyEncoder(tiny_student)
    other.model = {"id": "other"}
    with pytest.raises(KdpipeError, match="embeddings of another model"):
        run(other, class_index, tmp_path / "imgs", tmp_path / "other.jsonl", embeddings=emb)


def write_shards(root, paths, per_shard=3):
    root.mkdir()
    for s in range(0, len(paths), per_shard):
        with tarfile.open(root / f"s-{s // per_shard}.tar", "w") as tar:
            for i, p in enumerate(paths[s:s + per_shard], s):
                for ext, data in ((p.suffix, p.read_bytes()), (".json", json.dumps({"caption": f"cap {i}", "n": i}).encode()),
                                  (".txt", f"text {i}".encode())):
                    info = tarfile.TarInfo(f"k{i:03d}{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_keep_meta_columns_for_shards(tmp_path, tiny_student, class_index, suffix):
    write_shards(tmp_path / "shards", write_images(tmp_path / "imgs", 7, sub=False))
    out = tmp_path / f"o{suffix}"
    run(TinyEncoder(tiny_student), class_index, str(tmp_path / "shards"), out, keep_meta=["json", "TXT"], workers=2)
    rows = read_rows(out)
    assert len(rows) == 7
    for r in rows:
        i = int(r["key"].rsplit("#k", 1)[1])
        assert r["__url__"].endswith(f"s-{i // 3}.tar") and r["txt"] == f"text {i}"
        meta = r["json"] if suffix == ".jsonl" else json.loads(r["json"])
        assert meta == {"caption": f"cap {i}", "n": i}
    with pytest.raises(KdpipeError, match="--keep-meta applies to shard inputs"):
        run(TinyEncoder(tiny_student), class_index, tmp_path / "imgs", tmp_path / "x.jsonl", keep_meta=["json"])
    with pytest.raises(KdpipeError, match="written with columns"):  # other columns: another output
        run(TinyEncoder(tiny_student), class_index, str(tmp_path / "shards"), out, keep_meta=["json"])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_parts_hold_each_image_once_resume_and_merge(tmp_path, tiny_student, class_index, suffix):
    write_images(tmp_path / "imgs", 13)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"")
    enc = TinyEncoder(tiny_student)
    out = tmp_path / f"o{suffix}"
    one = {r["path"]: r for r in read_rows(run(enc, class_index, tmp_path / "imgs", tmp_path / f"one{suffix}").out)}
    s = run(enc, class_index, tmp_path / "imgs", out, parts=3, embeddings=tmp_path / "emb")
    parts = [part_path(out, p, 3) for p in range(3)]
    assert parts[1].name == f"o.part-00001-of-00003{suffix}" and s.parts == parts and not out.exists()
    assert "3 parts" in "\n".join(s.lines()) and s.rows_new == 13 and s.skipped_total == 1
    got = [r for p in parts for r in read_rows(p)]
    assert len(got) == 13 and {r["path"]: r for r in got} == one
    emb_keys, _ = read_embeddings(tmp_path / "emb")
    assert sorted(emb_keys) == sorted(one) and len({p.name.split(".")[0] for p in (tmp_path / "emb").glob("*.npy")}) == 3
    again = TinyEncoder(tiny_student)
    s = run(again, class_index, tmp_path / "imgs", out, parts=3, embeddings=tmp_path / "emb")
    assert s.rows_new == 0 and again.calls == 0 and s.resumed == 14
    with pytest.raises(KdpipeError, match="already has 3 parts.*--parts 3"):
        run(again, class_index, tmp_path / "imgs", out, parts=2)
    s = run(again, class_index, tmp_path / "imgs", out, parts=3, merge=True)
    assert {r["path"]: r for r in read_rows(out)} == one and len(read_rows(out)) == 13
    assert not any(p.exists() for p in parts) and again.calls == 0 and s.rows_total == 13
    s = run(again, class_index, tmp_path / "imgs", out, parts=3, merge=True)  # merged already: nothing redone
    assert again.calls == 0 and s.rows_new == 0 and len(read_rows(out)) == 13


def test_parts_under_torchrun_match_one_process(tmp_path, class_index):
    import os

    from test_classify import RANK_SCRIPT, run_ranks

    write_images(tmp_path / "imgs", 9)
    class_index.save(tmp_path / "classes.faiss")
    script = RANK_SCRIPT.format(tests=os.path.dirname(__file__), index=str(tmp_path / "classes.faiss"), images=str(tmp_path / "imgs"),
                                out=str(tmp_path / "two.jsonl"), model_id="tiny-test-encoder")
    script = script.replace('progress=False)', 'progress=False, parts=3, merge=True, embeddings={!r})'.format(str(tmp_path / "emb")))
    run_ranks(script)
    rows = read_rows(tmp_path / "two.jsonl")
    assert len(rows) == 9 and len({r["path"] for r in rows}) == 9 and all(len(r["probs"]) == 5 for r in rows)
    assert not list(tmp_path.glob("two.part-*")) and sorted(read_embeddings(tmp_path / "emb")[0]) == sorted(r["path"] for r in rows)
