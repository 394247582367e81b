"""The FAISS side of the class index: whether FAISS (and its GPU part) is installed, the index kinds
and their knobs, and building each kind over the class features (inner-product metric).

The rest of kdpipe asks :func:`faiss_module` through this module (``faiss_kinds.faiss_module()``),
so that one place decides whether FAISS is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdpipe.errors import KdpipeError

KINDS = ("flat", "ivf", "hnsw", "auto")
# Flat search costs B*C*D per batch, far less than encoding B images, until C gets very large.
AUTO_APPROX_FROM = 100_000


def faiss_module():
    """The ``faiss`` module, or None when neither faiss-cpu nor faiss-gpu is installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = faiss_module()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class IndexParams:
    """Knobs of the approximate kinds (recorded in the sidecar so a loaded index searches the same)."""

    nlist: int = 0  # ivf: number of k-means cells; 0 = 4*sqrt(C), capped so each cell trains on >= 39 rows
    nprobe: int = 0  # ivf: cells visited per query; 0 = max(16, nlist // 8)
    hnsw_m: int = 32  # hnsw: graph degree
    ef_construction: int = 80  # hnsw: candidate list while building
    ef_search: int = 128  # hnsw: candidate list while searching (raised to k + margin when smaller)
    # factory strings keep their own nlist; nprobe / ef_search above apply to them as well
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_kind(kind: str, n_classes: int) -> str:
    """A named kind, or anything else taken as a FAISS ``index_factory`` string (checked when built)."""
    if kind == "auto":
        return "hnsw" if n_classes >= AUTO_APPROX_FROM and faiss_module() is not None else "flat"
    return kind


def ivf_part(index):
    """The IVF inside ``index`` (plain, wrapped by a factory string, or a GPU copy), else None."""
    if index is None:
        return None
    if hasattr(index, "nprobe"):
        return index
    try:
        return faiss_module().extract_index_ivf(index)
    except RuntimeError:  # faiss raises this for "not an IVF"
        return None


def hnsw_part(index):
    return getattr(index, "hnsw", None) if index is not None else None


def _build_factory(faiss, feats: np.ndarray, spec: str):
    """``faiss.index_factory`` with the inner-product metric, trained on ``feats``; one-line errors."""
    n, d = feats.shape
    try:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise KdpipeError(f"unknown index kind {spec!r}: not {', '.join(KINDS)}, nor a FAISS index_factory string "
                          f"that builds for dimension {d} ({faiss_reason(e)})") from None
    ivf = ivf_part(index)
    if ivf is not None:
        ivf.cp.seed = 1234  # deterministic k-means
    try:
        if not index.is_trained:
            index.train(feats)
        index.add(feats)
    except RuntimeError as e:
        raise KdpipeError(f"--index {spec!r} cannot be built over {n} classes of dimension {d} ({faiss_reason(e)})") from None
    return index


def faiss_reason(e: BaseException) -> str:
    # FAISS errors name the C++ function and source line first; the sentence after them is what a user can act on
    msg = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or "faiss refused it"
    return (msg.split(" failed: ", 1)[1] if " failed: " in msg else msg.rsplit(": ", 1)[-1])[:200]


def build_faiss(faiss, feats: np.ndarray, kind: str, params: IndexParams):
    n, d = feats.shape
    if kind not in KINDS:
        return _build_factory(faiss, feats, kind)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
    else:  # ivf: k-means cells trained on the class features themselves
        nlist = params.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        nlist = max(1, min(nlist, n))
        params.nlist = nlist
        params.nprobe = min(nlist, params.nprobe or max(16, nlist // 8))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # deterministic k-means
        index.train(feats)
        index.make_direct_map()
    index.add(feats)
    return index
