"""``ClassIndex``: top-k inner-product search over the class features, exact rescoring, save and load."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdpipe.errors import KdpipeError
from kdpipe.infer.index import faiss_kinds
from kdpipe.infer.index.faiss_kinds import IndexParams, build_faiss, faiss_reason, hnsw_part, ivf_part, resolve_kind
from kdpipe.infer.index.sidecar import SIDECAR_FORMAT, SIDECAR_VERSION, damaged_index, read_sidecar, sidecar_path
from kdpipe.io import atomic_path, read_tensors, write_json, write_tensors

TIE_MARGIN = 8

# (backend-choice key) -> "faiss" | "torch"; measured once per process
_FLAT_CHOICE: dict[tuple, str] = {}
_FLAT_TIMINGS: dict[tuple, dict[str, float]] = {}


def _as_float32_rows(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise KdpipeError(f"{what} must be a non-empty [N, D] matrix, got shape {tuple(t.shape)}")
    return t.detach().to(torch.float32).contiguous()


class ClassIndex:
    """Top-k inner-product search over ``C`` class feature rows of dimension ``D``."""

    def __init__(self, features: torch.Tensor, kind: str, params: IndexParams, faiss_index=None, device: str = "cpu"):
        self.features = features.cpu().contiguous()  # [C, D] float32, the exact rows (rescoring, torch path)
        self.kind = kind
        self.params = params
        self.device = torch.device(device)
        self._faiss_cpu = faiss_index  # kept for saving (a GPU copy cannot be written)
        self._faiss = self._maybe_to_gpu(faiss_index)
        self._torch_features = self.features.to(self.device) if self.device.type != "cpu" else self.features
        self.backend_used: str | None = None  # last backend that answered (for logs and bench)
        self._forced_backend: str | None = None

    # ----------------------------------------------------------------- build
    @classmethod
    def build(cls, features, kind: str = "flat", device: str = "cpu", params: IndexParams | None = None) -> "ClassIndex":
        """Index the rows of ``features`` ([C, D], L2-normalised); ids are the row numbers."""
        feats = _as_float32_rows(features, "class features")
        params = params or IndexParams()
        kind = resolve_kind(kind, feats.shape[0])
        faiss = faiss_kinds.faiss_module()
        if kind != "flat" and faiss is None:
            raise KdpipeError(f"--index {kind} needs FAISS: pip install 'kdpipe[cpu]' (or 'kdpipe[gpu]'), or use --index flat")
        index = None
        if faiss is not None:
            index = build_faiss(faiss, feats.numpy(), kind, params)
        return cls(feats, kind, params, index, device)

    def _maybe_to_gpu(self, index):
        # HNSW has no GPU implementation in FAISS; flat and IVF do.
        if index is None or self.device.type != "cuda" or "hnsw" in self.kind.lower() or not faiss_kinds.faiss_has_gpu():
            return index
        faiss = faiss_kinds.faiss_module()
        self._gpu_res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_res, self.device.index or 0, index)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def ntotal(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    # ----------------------------------------------------------------- search
    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (scores [B, k] float32, ids [B, k] int64) per query row, best first.

        Ties are broken by the smaller class id. An approximate index that finds fewer than ``k``
        classes for a query pads with id -1 and score -inf.
        """
        q, n, backend = self._plan(queries, k)
        cand = self._candidates(backend, q, n)
        self.backend_used = backend
        return self._rescore(q, cand, k)

    def search_logsumexp(self, queries, k: int, scale: float, decimals: int | None = None,
                         chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`search` and :meth:`logsumexp` of the same queries. On the torch flat path one
        float64 pass over the classes gives both the candidates and the softmax denominator."""
        q, n, backend = self._plan(queries, k)
        if backend != "torch":
            scores, ids = self.search(q, k)
            return scores, ids, self.logsumexp(q, scale, decimals, chunk)
        lse, cand_scores, cand_ids = [], [], []
        for start, cos in self._cosines(q, chunk):
            lse.append(_logsumexp_rows(cos, scale, decimals))
            top = cos.topk(min(n, cos.shape[1]), dim=1)
            cand_scores.append(top.values)
            cand_ids.append(top.indices + start)
        best = torch.cat(cand_scores, 1).topk(n, dim=1).indices
        cand = torch.cat(cand_ids, 1).gather(1, best)
        self.backend_used = backend
        return (*self._rescore(q, cand, k), torch.logsumexp(torch.stack(lse, 1), dim=1).cpu())

    def _plan(self, queries, k: int) -> tuple[torch.Tensor, int, str]:
        """Checked float32 queries, the candidate count and the backend that answers them."""
        q = _as_float32_rows(queries, "queries") if not isinstance(queries, torch.Tensor) else queries.detach().float()
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise KdpipeError(
                f"query features have dimension {q.shape[-1]} but the class index has {self.dim}; "
                "the encoder and the class features come from different models"
            )
        if k < 1:
            raise KdpipeError(f"top-k must be at least 1, got {k}")
        n = min(k + TIE_MARGIN, self.ntotal)
        return q, n, self._flat_backend(q, n) if self.kind == "flat" else "faiss"

    def _cosines(self, queries: torch.Tensor, chunk: int):
        """(first class id, float64 cosines [B, <=chunk]) over all classes, ``chunk`` classes at a time."""
        f = self._torch_features
        q = queries.detach().to(f.device, torch.float64)
        for i in range(0, self.ntotal, chunk):
            yield i, q @ f[i:i + chunk].double().T

    def _candidates(self, backend: str, q: torch.Tensor, n: int) -> torch.Tensor:
        if backend == "torch":
            f = self._torch_features
            scores = q.to(f.device) @ f.T
            return scores.topk(n, dim=1).indices
        self._set_search_params(n)
        qn = np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)
        _, ids = self._faiss.search(qn, n)
        return torch.from_numpy(ids)

    def _set_search_params(self, n: int) -> None:
        ivf, hnsw = ivf_part(self._faiss), hnsw_part(self._faiss)
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, self.params.nprobe or max(16, ivf.nlist // 8))
        if hnsw is not None:
            hnsw.efSearch = max(self.params.ef_search, n)

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None) -> "ClassIndex":
        """Search-time knobs (``--nprobe`` / ``--ef-search``); one-line error where the index has no such knob."""
        for name, value, part in (("--nprobe", nprobe, ivf_part), ("--ef-search", ef_search, hnsw_part)):
            if value is None:
                continue
            if value < 1:
                raise KdpipeError(f"{name} must be at least 1, got {value}")
            if part(self._faiss) is None:
                what = "IVF" if name == "--nprobe" else "HNSW"
                raise KdpipeError(f"{name} applies to {what} indexes; the class index here is {self.kind!r}")
        if nprobe is not None:
            self.params.nprobe = nprobe
        if ef_search is not None:
            self.params.ef_search = ef_search
        return self

    def logsumexp(self, queries: torch.Tensor, scale: float, decimals: int | None = None, chunk: int = 16384) -> torch.Tensor:
        """``log sum_c exp(scale * q . f_c)`` over ALL classes per query ([B] float64): the softmax
        denominator, exact whatever the index (approximate kinds only see their candidates).
        ``decimals`` rounds the cosines first, as the output rounds its scores: an encoder's features
        move in the 7th digit with the batch an image shares, and the scale (~100) would carry that
        into the probabilities. Chunked over classes so memory stays at ``B x chunk``."""
        parts = [_logsumexp_rows(cos, scale, decimals) for _, cos in self._cosines(queries, chunk)]
        return torch.logsumexp(torch.stack(parts, 1), dim=1).cpu()

    def _rescore(self, q: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._torch_features
        cand = cand.to(f.device)
        missing = cand < 0
        safe = cand.clamp_min(0)
        rows = f[safe].double()  # [B, n, D]
        exact = torch.einsum("bnd,bd->bn", rows, q.to(f.device).double())
        exact = exact.masked_fill(missing, float("-inf"))
        ids = cand.masked_fill(missing, self.ntotal)  # padding sorts last among equal scores
        by_id = ids.argsort(dim=1)
        ids, exact = ids.gather(1, by_id), exact.gather(1, by_id)
        by_score = torch.sort(exact, dim=1, descending=True, stable=True).indices
        ids, exact = ids.gather(1, by_score)[:, :k], exact.gather(1, by_score)[:, :k]
        ids = ids.masked_fill(ids >= self.ntotal, -1)
        k_found = ids.shape[1]
        if k_found < k:  # fewer classes than k
            pad = k - k_found
            ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), -1)], 1)
            exact = torch.cat([exact, exact.new_full((exact.shape[0], pad), float("-inf"))], 1)
        return exact.float().cpu(), ids.cpu()

    # ----------------------------------------------------------- flat backend choice
    def flat_backends(self) -> list[str]:
        return ["faiss", "torch"] if self._faiss is not None else ["torch"]

    def _choice_key(self, batch: int) -> tuple:
        bucket = 1 << max(0, math.ceil(math.log2(max(batch, 1))))
        return (self.ntotal, self.dim, bucket, self.device.type, self._faiss is not None)

    def _flat_backend(self, q: torch.Tensor, n: int) -> str:
        backends = self.flat_backends()
        if self._forced_backend is not None:
            return self._forced_backend
        if len(backends) == 1:
            return backends[0]
        key = self._choice_key(q.shape[0])
        if key not in _FLAT_CHOICE:
            timings = _best_times({b: (lambda b=b: self._candidates(b, q, n)) for b in backends}, self.device)
            _FLAT_TIMINGS[key] = timings
            _FLAT_CHOICE[key] = min(timings, key=timings.get)
        return _FLAT_CHOICE[key]

    def force_flat_backend(self, backend: str | None) -> None:
        """Pin this index's flat backend (benchmarks and tests compare both); None measures again."""
        if backend is not None and backend not in self.flat_backends():
            raise KdpipeError(f"flat backend {backend!r} is not available here; available: {', '.join(self.flat_backends())}")
        self._forced_backend = backend

    def flat_timings(self, batch: int) -> dict[str, float] | None:
        """Seconds per search measured for this size when the backend was picked (None if not yet)."""
        return _FLAT_TIMINGS.get(self._choice_key(batch))

    # ----------------------------------------------------------------- persist
    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "metric": "inner_product",
            "storage": "faiss" if self._faiss_cpu is not None else "safetensors",
            "params": {"nlist": p.nlist, "nprobe": p.nprobe, "hnsw_m": p.hnsw_m,
                       "ef_construction": p.ef_construction, "ef_search": p.ef_search},
        }

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` and its description to ``path.json``, both atomically."""
        path = Path(path)
        if self._faiss_cpu is not None:
            with atomic_path(path) as tmp:
                faiss_kinds.faiss_module().write_index(self._faiss_cpu, str(tmp))
        else:
            write_tensors(path, {"features": self.features})
        write_json(sidecar_path(path), self.describe())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "ClassIndex":
        path = Path(path)
        side = sidecar_path(path)
        if not path.is_file() or not side.is_file():
            raise KdpipeError(f"class index {path} (and its sidecar {side.name}) not found; build one with ClassIndex.build(...).save(path)")
        meta = read_sidecar(path)
        params = IndexParams(**{k: v for k, v in meta.get("params", {}).items() if k in IndexParams.__dataclass_fields__})
        if meta["storage"] == "safetensors":
            try:
                feats = read_tensors(path)[0]["features"]
            except KdpipeError as e:
                raise damaged_index(path, str(e).replace(f"{path} ", "", 1)) from None
            except KeyError:
                raise damaged_index(path, "no 'features' tensor") from None
            return cls(feats, meta["kind"], params, None, device)
        faiss = faiss_kinds.faiss_module()
        if faiss is None:
            raise KdpipeError(f"{path} is a FAISS index but FAISS is not installed: pip install 'kdpipe[cpu]' (or 'kdpipe[gpu]')")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:  # FAISS reports a foreign or truncated file this way
            reason = faiss_reason(e)
            reason = "the file ends early, truncated" if reason.startswith("read error in ") else reason
            raise damaged_index(path, f"FAISS cannot read it: {reason}") from None
        if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
            raise damaged_index(path, f"it holds {index.ntotal} x {index.d} but its sidecar says {meta['ntotal']} x {meta['dim']}")
        if ivf_part(index) is not None:  # reconstruct_n on an IVF needs its direct map
            faiss.extract_index_ivf(index).make_direct_map()
        feats = torch.from_numpy(index.reconstruct_n(0, index.ntotal).copy())
        return cls(feats, meta["kind"], params, index, device)


def _logsumexp_rows(cos: torch.Tensor, scale: float, decimals: int | None) -> torch.Tensor:
    """``log sum exp(scale * cos)`` per row of one chunk, the cosines rounded to ``decimals`` first
    (:meth:`ClassIndex.logsumexp` says why); both softmax paths go through here so they agree."""
    return torch.logsumexp(scale * (cos if decimals is None else torch.round(cos, decimals=decimals)), dim=1)


def _best_times(fns: dict[str, "callable"], device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds per call, after one warm-up call each (first calls pay for thread
    pools); the candidates take turns so a change in machine load hits them alike. Slow searches
    (huge label sets) are timed once, so measuring never costs more than a few searches."""
    slowest = 0.0
    for fn in fns.values():
        t = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t)
    if slowest > 0.25:
        repeats = 1
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return best
