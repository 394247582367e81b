"""ClassIndex: exact flat search, approximate kinds, deterministic ties, save/load."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError
from kdpipe.infer.index import ClassIndex, IndexParams, sidecar_path


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("backend", ["faiss", "torch", "auto"])
def test_flat_equals_brute_force_matmul_topk(backend):
    feats, queries = unit(300, 40, 0), unit(70, 40, 1)
    index = ClassIndex.build(feats, kind="flat")
    if backend != "auto":
        index.force_flat_backend(backend)
    scores, ids = index.search(queries, 7)
    ref_scores, ref_ids = (queries @ feats.T).topk(7)
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(scores, ref_scores, atol=1e-6)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    if backend == "auto":  # both were timed on first use and the faster one answered
        assert set(index.flat_timings(len(queries))) == {"faiss", "torch"}
        assert index.backend_used == min(index.flat_timings(len(queries)), key=index.flat_timings(len(queries)).get)


def test_faiss_and_torch_agree_exactly_and_ties_go_to_the_smaller_id():
    base = unit(50, 16, 3)
    feats = torch.cat([base, base[:10]])  # classes 50..59 duplicate 0..9: exact ties
    queries = torch.cat([base[:10], unit(20, 16, 4)])
    index = ClassIndex.build(feats)
    results = {}
    for backend in ("faiss", "torch"):
        index.force_flat_backend(backend)
        results[backend] = index.search(queries, 4)
        assert index.backend_used == backend
    assert torch.equal(results["faiss"][0], results["torch"][0])
    assert torch.equal(results["faiss"][1], results["torch"][1])
    ids = results["torch"][1]
    for i in range(10):  # a query equal to a duplicated class: the lower id first, then its twin
        assert ids[i, 0].item() == i and ids[i, 1].item() == 50 + i


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_right_class_on_separated_features(kind):
    feats = unit(2000, 32, 5)
    labels = torch.randint(0, 2000, (200,), generator=torch.Generator().manual_seed(6))
    queries = F.normalize(feats[labels] + 0.05 * unit(200, 32, 7), dim=-1)
    index = ClassIndex.build(feats, kind=kind)
    scores, ids = index.search(queries, 3)
    assert torch.equal(ids[:, 0], labels)
    assert (scores[:, 0] >= scores[:, 1]).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    feats, queries = unit(400, 24, 8), unit(30, 24, 9)
    index = ClassIndex.build(feats, kind=kind)
    before = index.search(queries, 5)
    path = index.save(tmp_path / "classes.faiss")
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["kind"] == kind and meta["ntotal"] == 400 and meta["dim"] == 24
    loaded = ClassIndex.load(path)
    assert loaded.kind == kind and torch.equal(loaded.features, index.features)
    after = loaded.search(queries, 5)
    assert torch.equal(before[1], after[1]) and torch.equal(before[0], after[0])
    assert not list(tmp_path.glob("*.tmp"))


def test_more_k_than_classes_pads_and_numpy_queries_work():
    feats = unit(3, 8, 10)
    scores, ids = ClassIndex.build(feats).search(np.asarray(feats[:2]), 5)
    assert ids.shape == (2, 5) and ids[0, 0] == 0 and ids[1, 0] == 1
    assert (ids[:, 3:] == -1).all() and torch.isinf(scores[:, 3:]).all()


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(KdpipeError, match="unknown index kind .kd-tree.: not flat, ivf, hnsw, auto, nor a FAISS index_factory"):
        ClassIndex.build(unit(5, 4, 0), kind="kd-tree")
    with pytest.raises(KdpipeError, match=r"\[N, D\] matrix"):
        ClassIndex.build(torch.zeros(0, 4))
    with pytest.raises(KdpipeError, match="dimension 5 but the class index has 4"):
        ClassIndex.build(unit(5, 4, 0)).search(unit(2, 5, 1), 1)
    with pytest.raises(KdpipeError, match="not found"):
        ClassIndex.load(tmp_path / "nothing.faiss")


def test_ivf_params_recorded_and_reused(tmp_path):
    index = ClassIndex.build(unit(1000, 16, 11), kind="ivf", params=IndexParams(nlist=20, nprobe=5))
    loaded = ClassIndex.load(index.save(tmp_path / "i.faiss"))
    assert (loaded.params.nlist, loaded.params.nprobe) == (20, 5)


def test_without_faiss_flat_uses_torch_and_saves_safetensors(tmp_path, monkeypatch):
    import kdpipe.infer.index.faiss_kinds as faiss_kinds

    monkeypatch.setattr(faiss_kinds, "faiss_module", lambda: None)
    feats, queries = unit(100, 12, 12), unit(9, 12, 13)
    index = ClassIndex.build(feats)
    scores, ids = index.search(queries, 3)
    assert index.backend_used == "torch" and torch.equal(ids, (queries @ feats.T).topk(3).indices)
    loaded = ClassIndex.load(index.save(tmp_path / "flat.idx"))
    assert json.loads(sidecar_path(tmp_path / "flat.idx").read_text())["storage"] == "safetensors"
    assert torch.equal(loaded.search(queries, 3)[1], ids)
    with pytest.raises(KdpipeError, match="--index hnsw needs FAISS"):
        ClassIndex.build(feats, kind="hnsw")


@pytest.mark.parametrize("spec", ["IVF32,Flat", "HNSW16", "IVF32,PQ8x4"])
def test_factory_strings_recall_against_flat(spec):
    feats = unit(3000, 32, 14)
    labels = torch.randint(0, 3000, (200,), generator=torch.Generator().manual_seed(15))
    queries = F.normalize(feats[labels] + 0.2 * unit(200, 32, 19), dim=-1)  # images near their class, as in use
    exact = ClassIndex.build(feats).search(queries, 5)
    index = ClassIndex.build(feats, kind=spec).set_search(nprobe=12 if "IVF" in spec else None, ef_search=64 if "HNSW" in spec else None)
    scores, ids = index.search(queries, 5)
    assert index.kind == spec
    recall5 = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), exact[1].tolist())])
    recall1 = (ids[:, 0] == exact[1][:, 0]).float().mean().item()
    assert recall1 >= 0.9 and recall5 >= (0.4 if "PQ" in spec else 0.8), (recall1, recall5)  # PQ codes are coarse
    found = ids == exact[1]  # where the same class is found, its score is the exact one (rescored)
    assert torch.allclose(scores[found], exact[0][found], atol=1e-6)


def test_factory_string_errors_and_search_knobs_are_one_line():
    feats = unit(100, 16, 16)
    for spec, expected in (("Bogus99", "could not parse"), ("IVF512,Flat", "training points"), ("IVF4,PQ5", "multiple")):
        with pytest.raises(KdpipeError, match=expected) as e:
            ClassIndex.build(feats, kind=spec)
        assert "\n" not in str(e.value) and spec in str(e.value)
    with pytest.raises(KdpipeError, match="--nprobe applies to IVF indexes"):
        ClassIndex.build(feats, kind="HNSW8").set_search(nprobe=4)
    with pytest.raises(KdpipeError, match="--ef-search applies to HNSW"):
        ClassIndex.build(feats, kind="flat").set_search(ef_search=4)
    ivf = ClassIndex.build(feats, kind="IVF4,Flat").set_search(nprobe=4)  # all cells: exact
    assert torch.equal(ivf.search(feats[:10], 3)[1], ClassIndex.build(feats).search(feats[:10], 3)[1])


def test_logsumexp_is_over_all_classes():
    feats, queries = unit(20000, 8, 17), unit(3, 8, 18)
    lse = ClassIndex.build(feats).logsumexp(queries, 30.0, chunk=7000)
    assert torch.allclose(lse, torch.logsumexp(30.0 * queries.double() @ feats.double().T, dim=1))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_search_logsumexp_equals_search_and_logsumexp(backend):
    # torch: one float64 pass over the classes (in chunks) gives both; faiss: the two calls
    feats, queries = unit(20000, 8, 17), unit(5, 8, 18)
    index = ClassIndex.build(feats, kind="flat")
    index.force_flat_backend(backend)
    scores, ids, lse = index.search_logsumexp(queries, 4, 30.0, 6, chunk=7000)
    ref_scores, ref_ids = index.search(queries, 4)
    assert torch.equal(ids, ref_ids) and torch.equal(scores, ref_scores)
    assert torch.equal(lse, index.logsumexp(queries, 30.0, 6, chunk=7000))
    assert index.backend_used == backend
