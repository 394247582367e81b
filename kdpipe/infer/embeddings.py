"""``classify --embeddings DIR``: the image embeddings a run computed anyway, to build your own index.

Layout of ``DIR``:
  - ``embeddings.json``: model identity, dimension, dtype (float16), the key column;
  - ``PREFIX-CCCCC.npy``: float16 ``[n, D]`` L2-normalised image embeddings (``numpy.load``);
  - ``PREFIX-CCCCC.keys.txt``: the ``n`` keys (the output's ``path`` / ``key`` column), one per line,
    in the order of the ``.npy`` rows.
``PREFIX`` is ``part`` for a single output, ``part-00001-of-00004`` for ``--parts`` files and
``rank-1`` under torchrun; any prefix can be read the same way (every ``*.keys.txt`` with its ``.npy``).

Consistency with the rows: every key with a row in the output has exactly one embedding row in
``DIR`` once the run finishes. Chunks are written whole every ``CHUNK_ROWS`` images and at the end:
the ``.npy`` first, then the keys file, which commits the chunk (both atomically). A kill loses at
most the chunk being filled; the next run encodes the images that have a row but no embedding
again, for their embeddings only (their rows are not written twice).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdpipe.errors import KdpipeError
from kdpipe.io import atomic_path, read_json_or_none, write_json

CHUNK_ROWS = 65536  # 64 MiB of float16 at D=512: big files for an index build, bounded memory here
META_FILE = "embeddings.json"
META_FORMAT = "kdpipe-classify-embeddings"


def keys_file(npy: Path) -> Path:
    return npy.with_name(npy.stem + ".keys.txt")


def unstorable(key: str) -> str | None:
    """Why a key cannot go in a keys file (one key per line), None when it can."""
    return "path contains a line break, which the --embeddings keys file cannot hold" if "\n" in key or "\r" in key else None


def prepare(folder: str | Path, model: dict[str, Any], dim: int, key_column: str, overwrite: bool) -> Path:
    """Create ``folder`` or check it holds this model's embeddings (one line otherwise); once per run, before any writer."""
    folder = Path(folder)
    meta = {"format": META_FORMAT, "version": 1, "model": model, "dim": dim, "dtype": "float16", "key_column": key_column}
    prev = read_json_or_none(folder / META_FILE)
    if overwrite and prev is not None:
        for p in [folder / META_FILE, *folder.glob("*.npy"), *folder.glob("*.keys.txt")]:
            p.unlink()
    elif prev is not None and (not isinstance(prev, dict) or (prev.get("model") or {}).get("id") != model["id"] or prev.get("dim") != dim):
        raise KdpipeError(f"--embeddings {folder} holds embeddings of another model; pass --overwrite to replace them, or choose another folder")
    elif prev is None and folder.is_dir() and any(folder.glob("*.npy")):
        raise KdpipeError(f"--embeddings {folder} holds .npy files kdpipe did not write (no {META_FILE}); choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / META_FILE, meta)
    return folder


class EmbeddingWriter:
    """Chunks of one prefix in ``folder``; ``done`` holds every key with an embedding (all prefixes)."""

    def __init__(self, folder: Path, prefix: str, chunk_rows: int = CHUNK_ROWS):
        self.folder, self.prefix, self.chunk_rows = Path(folder), prefix, chunk_rows
        self.done = self._recover()
        self.keys: list[str] = []
        self.rows: list[np.ndarray] = []

    def _mine(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.prefix}-[0-9][0-9][0-9][0-9][0-9].npy"))

    def _recover(self) -> set[str]:
        for npy in self._mine():
            if not keys_file(npy).exists():  # killed between the two writes: never committed
                npy.unlink()
        done: set[str] = set()
        for keys in self.folder.glob("*.keys.txt"):
            done.update(keys.read_text(encoding="utf-8").splitlines())
        return done

    def append(self, keys: list[str], feats: torch.Tensor) -> None:
        """Buffer the embeddings of ``keys`` not stored yet; a full chunk is written."""
        new = [i for i, k in enumerate(keys) if k not in self.done]
        if not new:
            return
        self.keys += [keys[i] for i in new]
        self.rows.append(feats[new].detach().to(torch.float16).cpu().numpy())
        self.done.update(keys[i] for i in new)
        if len(self.keys) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        n = max((int(p.stem.rsplit("-", 1)[1]) for p in self._mine()), default=-1) + 1
        npy = self.folder / f"{self.prefix}-{n:05d}.npy"
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.save on a path would append ".npy" to the temp name
                np.save(f, np.concatenate(self.rows))
                _sync(f)
        with atomic_path(keys_file(npy)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(k + "\n" for k in self.keys))
                _sync(f)
        self.keys, self.rows = [], []


def read_embeddings(folder: str | Path) -> tuple[list[str], np.ndarray]:
    """All keys and their float16 embeddings in ``folder`` (chunk by chunk, in file-name order)."""
    keys, arrays = [], []
    for kf in sorted(Path(folder).glob("*.keys.txt")):
        arrays.append(np.load(kf.with_name(kf.name[: -len(".keys.txt")] + ".npy")))
        keys += kf.read_text(encoding="utf-8").splitlines()
    return keys, (np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float16))


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())

