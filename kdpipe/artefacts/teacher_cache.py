"""The ``teacher-cache`` stage's files, read by ``distill`` (:class:`kdpipe.distill.teacher_cache.CachedTeacher`).

``features.safetensors``: tensor ``features`` ``[V, N, D]`` (fp16, L2-normalised rows: the
teacher's image features of V augmented views of N images), ``views`` and ``seed`` in its
metadata. ``keys.json``: ``{"keys": [...], "shards": [...]}``, row i holds member ``keys[i]`` of
shard ``shards[i]`` (keys repeat across shard sets, so an image is its (shard, key) pair).
"""

from __future__ import annotations

from pathlib import Path

from kdpipe.errors import KdpipeError
from kdpipe.io import read_json, read_tensors, write_json, write_tensors

FEATURES = "features.safetensors"
KEYS = "keys.json"


def write_teacher_cache(stage_dir: str | Path, features, members: list[tuple[str, str]], seed: int) -> None:
    """``features`` ``[V, N, D]`` and the N images' (shard, key) ``members``, in row order."""
    stage_dir = Path(stage_dir)
    write_tensors(stage_dir / FEATURES, {"features": features}, {"views": int(features.shape[0]), "seed": seed})
    write_json(stage_dir / KEYS, {"keys": [k for _, k in members], "shards": [s for s, _ in members]})


def read_teacher_cache(stage_dir: str | Path) -> tuple[object, list[tuple[str, str]]]:
    """(features ``[V, N, D]``, the N rows' (shard, key)); one line when missing or of an older kdpipe."""
    folder = Path(stage_dir)
    if not (folder / FEATURES).is_file() or not (folder / KEYS).is_file():
        raise KdpipeError(f"teacher cache in {folder} is missing; run the teacher-cache stage (kdpipe run teacher-cache)")
    rows = read_json(folder / KEYS)
    if "shards" not in rows:  # written when images were keyed by key alone: namesakes shared a row
        raise KdpipeError(f"teacher cache in {folder} keys images without their shard (older kdpipe); re-run teacher-cache")
    tensors, _ = read_tensors(folder / FEATURES)
    return tensors["features"], list(zip(rows["shards"], rows["keys"]))
