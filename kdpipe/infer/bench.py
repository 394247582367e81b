"""``kdpipe bench index``: class-index search speed and recall, measured against baselines in one run.

Flat: FAISS ``IndexFlatIP`` vs a torch matmul + top-k over the same features and queries (the
ratio tells which one ``ClassIndex`` should pick on this machine, and whether it did).
IVF / HNSW: build time, search time and recall@1/@k against exact flat search, at label-set sizes
where they matter. Synthetic classes come in families of related classes; queries are class
features plus noise, normalised, so each has a true nearest class and near runners-up, like image
features against their label's text feature.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from kdpipe.infer.index import TIE_MARGIN, ClassIndex, faiss_module
from kdpipe.timing import per_call_ms


@dataclass
class FlatResult:
    classes: int
    dim: int
    batch: int
    faiss_ms: float | None  # per batch, FAISS IndexFlatIP candidates
    torch_ms: float  # per batch, torch matmul + topk candidates
    picked: str  # what ClassIndex chose for this size
    identical: bool  # same ids and scores from both backends after rescoring

    @property
    def faiss_over_torch(self) -> float | None:
        return self.faiss_ms / self.torch_ms if self.faiss_ms is not None else None


@dataclass
class ApproxResult:
    kind: str
    classes: int
    dim: int
    batch: int
    build_s: float
    search_ms: float  # per batch, whole ClassIndex.search (candidates + exact rescoring)
    flat_ms: float  # per batch, whole ClassIndex.search on the exact flat index
    recall1: float  # top-1 equal to the exact top-1
    recall_k: float  # fraction of the exact top-k ids found in the top-k
    k: int

    @property
    def speedup(self) -> float:
        return self.flat_ms / self.search_ms


def _queries(feats: torch.Tensor, batch: int, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, feats.shape[0], (batch,), generator=g)
    return F.normalize(feats[labels] + noise * F.normalize(torch.randn(batch, feats.shape[1], generator=g), dim=-1), dim=-1)


def random_classes(n: int, dim: int, seed: int, family: int = 20) -> torch.Tensor:
    """Unit rows in families of ~``family`` related classes (like breeds of one animal), so a
    query's runner-up classes are real neighbours and recall@k measures something."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(max(1, n // family), dim, generator=g), dim=-1)
    members = centers[torch.randint(0, centers.shape[0], (n,), generator=g)]
    return F.normalize(members + 0.6 * F.normalize(torch.randn(n, dim, generator=g), dim=-1), dim=-1)


def bench_flat(classes: int, dim: int, batch: int, k: int = 5, repeats: int = 5, device: str = "cpu", seed: int = 0) -> FlatResult:
    feats = random_classes(classes, dim, seed)
    q = _queries(feats, batch, noise=1.0, seed=seed + 1)
    index = ClassIndex.build(feats, kind="flat", device=device)
    n = min(k + TIE_MARGIN, classes)
    times = {b: per_call_ms(lambda b=b: index._candidates(b, q, n), index.device, repeats) for b in index.flat_backends()}
    index.force_flat_backend(None)
    index.search(q, k)  # lets ClassIndex measure and pick, as it would in classify
    picked = index.backend_used
    answers = []
    for b in index.flat_backends():
        index.force_flat_backend(b)
        answers.append(index.search(q, k))
    identical = all(torch.equal(a[0], answers[0][0]) and torch.equal(a[1], answers[0][1]) for a in answers)
    return FlatResult(classes, dim, batch, times.get("faiss"), times["torch"], picked, identical)


def bench_approx(kind: str, classes: int, dim: int, batch: int, k: int = 5, repeats: int = 5, device: str = "cpu", seed: int = 0) -> ApproxResult:
    feats = random_classes(classes, dim, seed)
    q = _queries(feats, batch, noise=1.0, seed=seed + 2)
    flat = ClassIndex.build(feats, kind="flat", device=device)
    exact_ids = flat.search(q, k)[1]
    t = time.perf_counter()
    approx = ClassIndex.build(feats, kind=kind, device=device)
    build_s = time.perf_counter() - t
    ids = approx.search(q, k)[1]
    recall1 = float((ids[:, 0] == exact_ids[:, 0]).float().mean())
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact_ids))
    return ApproxResult(
        kind, classes, dim, batch, build_s,
        search_ms=per_call_ms(lambda: approx.search(q, k), approx.device, repeats),
        flat_ms=per_call_ms(lambda: flat.search(q, k), flat.device, repeats),
        recall1=recall1, recall_k=hits / exact_ids.numel(), k=k,
    )


def bench_index(flat_sizes=(1000, 20000), approx_size: int = 20000, dim: int = 768, batch: int = 256, k: int = 5,
                repeats: int = 5, device: str = "cpu", kinds=("ivf", "hnsw")) -> dict:
    """All of the above; returns plain dicts (also what ``--json`` writes)."""
    flat = [bench_flat(c, dim, batch, k, repeats, device) for c in flat_sizes]
    approx = [bench_approx(kind, approx_size, dim, batch, k, repeats, device) for kind in kinds] if faiss_module() else []
    return {
        "device": device,
        "faiss": getattr(faiss_module(), "__version__", None),
        "torch_threads": torch.get_num_threads(),
        "flat": [{**asdict(r), "faiss_over_torch": r.faiss_over_torch} for r in flat],
        "approx": [{**asdict(r), "speedup_vs_flat": r.speedup} for r in approx],
    }
