"""Inner-product index over L2-normalised class features: ``ClassIndex``.

Kinds:
  - ``flat``: exact. FAISS ``IndexFlatIP`` (on the GPU when faiss-gpu and a GPU are present) or a
    torch matmul + top-k; the first search at a given size times both and keeps the faster for the
    rest of the process, because the faiss-cpu wheel's bundled OpenBLAS picks a slow kernel on some
    CPUs while torch's BLAS does not (and the reverse happens too).
  - ``ivf`` / ``hnsw``: approximate FAISS indexes for label sets of tens of thousands of classes.
  - ``auto``: ``flat`` below ``AUTO_APPROX_FROM`` classes, ``hnsw`` from there (when FAISS is present).
  - any FAISS ``index_factory`` string (``IVF256,Flat``, ``HNSW32``, ``IVF1024,PQ32``), built with
    the inner-product metric and trained on the class features themselves. Lossy codes (PQ, SQ) only
    pick candidates: the rescoring below uses the exact rows kept in memory.

Whatever the backend, results are made identical and deterministic the same way: each backend
returns ``k + TIE_MARGIN`` candidates, their scores are recomputed exactly (float64 dot products)
and the candidates are ordered by (score desc, class id asc). Two float32 backends may disagree in
the last bit, which would otherwise reorder near-ties; the margin absorbs that.

Saved as ``faiss.write_index`` + a JSON sidecar (``PATH.json``); without FAISS installed a flat
index is saved as safetensors instead. Nothing is ever pickled.

Modules: ``class_index`` (:class:`ClassIndex`), ``faiss_kinds`` (FAISS present?, the kinds and how
each is built), ``sidecar`` (the description beside a saved index).
"""

from kdpipe.infer.index.class_index import TIE_MARGIN, ClassIndex
from kdpipe.infer.index.faiss_kinds import IndexParams, faiss_has_gpu, faiss_module
from kdpipe.infer.index.sidecar import read_sidecar, sidecar_path

__all__ = [
    "TIE_MARGIN", "ClassIndex", "IndexParams", "faiss_has_gpu", "faiss_module", "read_sidecar", "sidecar_path",
]
