"""Resumable result files for ``classify``: one row per image, every image exactly once.

Columns: the key (``path`` or ``key``), then per rank 1..k the label, ``scores`` (cosine similarity
of the L2-normalised image and class features), ``probs`` (softmax over ALL classes at the model's
logit scale) and the class id, then the ``--keep-meta`` columns (shard inputs). JSONL and Parquet
hold lists (``labels``, ``scores``, ``probs``, ``ids``); CSV has ``label_i, score_i, prob_i, id_i``.

Files beside ``OUT``:
  - ``OUT.meta.json``: written before the first row; the model identity, top-k, key column and
    columns. A re-run with another model (or another top-k, other columns) is refused unless
    ``overwrite``; so is an output of an older kdpipe (no ``probs``), whose rows could not be mixed.
  - ``OUT.skipped.jsonl``: the unreadable images, ``{key, reason}``; they count as done.

Line formats (JSONL, CSV; ``lines``) append each batch with one ``write`` + ``fsync``. After a kill at any
point the file holds whole rows followed at most by one torn row; on resume the torn tail is cut
off and the keys of the whole rows are the done set, so each image ends up written exactly once.
Parquet (``parquet``) cannot be appended to, so rows go to atomically written part files, merged into ``OUT``
(atomically) when the run finishes; parts already merged before a kill are recognised by their keys.

A new format: a :class:`RowFile` class with ``@register_format(".ext")`` in a module of this package,
imported below so that it registers.
"""

from kdpipe.infer.writers import lines, parquet  # noqa: F401  (each registers its formats)
from kdpipe.infer.writers.lines import JsonlFile
from kdpipe.infer.writers.parquet import ParquetFile
from kdpipe.infer.writers.paths import meta_path, part_path, part_paths, skipped_path
from kdpipe.infer.writers.registry import register_format
from kdpipe.infer.writers.result import ResultWriter, read_rows, remove_output
from kdpipe.infer.writers.rows import RESULT_COLUMNS, Row

__all__ = [
    "RESULT_COLUMNS", "JsonlFile", "ParquetFile", "ResultWriter", "Row", "meta_path", "part_path",
    "part_paths", "read_rows", "register_format", "remove_output", "skipped_path",
]
