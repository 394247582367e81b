"""Where ``classify`` reads images from: a folder, a file list, or a webdataset shard set.

Every source yields :class:`Batch` es of decoded, preprocessed images with a stable key per image
(the key is what makes a re-run resumable). Decoding happens in DataLoader workers, so it overlaps
the model running in the main process. An unreadable image never stops a run: it is left out of the
batch and reported in ``Batch.skipped`` with the reason.

``open_source(spec, transform)`` picks the kind from the spec:
  - a folder of images (searched recursively) -> key = path relative to the folder;
  - a ``.txt`` (one path per line), ``.csv``/``.tsv`` or ``.jsonl`` file with a path column
    -> key = the path as written in the list (relative paths are read relative to the list file);
  - ``*.tar`` shards, a brace pattern (``shards/train-{000..009}.tar``), a ``pipe:`` URL, or a folder
    holding only ``.tar`` files -> key = ``<shard URL>#<__key__>`` (see ``shard_source``).
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from kdpipe.data.images import DECODE_ERRORS, describe_error, load_rgb
from kdpipe.data.shards.samples import PackedImages, stack_images  # noqa: F401  (PackedImages: Batch.images)
from kdpipe.dist import worker_init
from kdpipe.errors import KdpipeError
from kdpipe.io import json_lines

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
LIST_SUFFIXES = {".txt": "txt", ".lst": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
PATH_COLUMNS = ("path", "image", "image_path", "filepath", "file", "filename", "img")


@dataclass
class Batch:
    """Decoded images and their keys; ``skipped`` lists (key, reason) met while making this batch."""

    # [B, 3, H, W], None when every image of the batch was unreadable; uint8 pixels or packed
    # encoded images when the GPU finishes them (``device_decode``)
    images: "torch.Tensor | PackedImages | list[torch.Tensor] | None"
    keys: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ImageSource(ABC):
    """Base class: ``batches(...)`` streams everything not in ``done``."""

    key_column = "path"  # the output column holding the key

    def __init__(self, spec: str):
        self.spec = spec

    @abstractmethod
    def describe(self) -> str:
        """What is read, for logs and the output sidecar."""

    def count(self) -> int | None:
        """How many images the source holds, when known without decoding (for the progress bar)."""
        return None

    @abstractmethod
    def batches(self, transform: Callable, batch_size: int, workers: int, done: set[str], pin_memory: bool = False,
                rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches of every image whose key is not in ``done``, decoded by ``workers`` processes.

        With ``world > 1`` only this ``rank``'s share, chosen from the key alone (see ``ranks``).
        """


# --------------------------------------------------------------------------- decoding (workers)
def unreadable_reason(path: str, error: BaseException) -> str:
    """Why ``path`` could not be decoded, in words for the skipped list."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    return f"not a readable image ({describe_error(error)})"


class _PathDataset(torch.utils.data.Dataset):
    def __init__(self, entries: list[tuple[str, str]], transform: Callable):
        self.entries = entries  # (key, filesystem path)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        key, path = self.entries[i]
        try:
            if getattr(self.transform, "reads_bytes", False):  # decoded on the GPU (device_decode)
                with open(path, "rb") as f:
                    data = f.read()
                if not data:
                    return key, None, "empty file (0 bytes)"
                return key, self.transform(data), None
            img = load_rgb(path)  # training's decoder: the same file gives the same pixels here
        except DECODE_ERRORS as e:
            return key, None, unreadable_reason(path, e)
        return key, self.transform(img), None


def _collate(items) -> Batch:
    keys = [k for k, img, _ in items if img is not None]
    images = [img for _, img, _ in items if img is not None]
    skipped = [(k, why) for k, img, why in items if img is None]
    return Batch(stack_images(images) if images else None, keys, skipped)


def loader_kwargs(workers: int, pin_memory: bool) -> dict:
    kw = {"num_workers": workers, "pin_memory": pin_memory}
    if workers > 0:
        kw.update(worker_init_fn=worker_init, prefetch_factor=4)
    return kw


class PathSource(ImageSource):
    """Images given by filesystem paths (a folder walk or a list file)."""

    def __init__(self, spec: str, entries: list[tuple[str, str]], what: str):
        super().__init__(spec)
        self.entries = entries
        self.what = what

    def describe(self) -> str:
        return f"{self.what} {self.spec} ({len(self.entries)} images)"

    def count(self) -> int:
        return len(self.entries)

    def batches(self, transform, batch_size, workers, done, pin_memory=False, rank=0, world=1):
        todo = [e for e in self.entries if e[0] not in done and (world == 1 or key_share(e[0], world) == rank)]
        if not todo:
            return
        loader = torch.utils.data.DataLoader(
            _PathDataset(todo, transform), batch_size=batch_size, shuffle=False, collate_fn=_collate,
            **loader_kwargs(min(workers, len(todo)), pin_memory),
        )
        yield from loader


def key_share(key: str, world: int) -> int:
    """The process that handles ``key`` out of ``world``: a stable hash, the same in every process."""
    return zlib.crc32(key.encode("utf-8")) % world


# --------------------------------------------------------------------------- the kinds
def folder_entries(root: Path) -> list[tuple[str, str]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                full = Path(dirpath) / name
                entries.append((full.relative_to(root).as_posix(), str(full)))
    return entries


def list_entries(path: Path) -> list[tuple[str, str]]:
    kind = LIST_SUFFIXES[path.suffix.lower()]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"cannot read the image list {path}: {e}") from e
    if kind == "txt":
        raw = [ln.strip() for ln in text.splitlines()]
        raw = [ln for ln in raw if ln and not ln.startswith("#")]
    elif kind == "jsonl":
        raw = [obj if isinstance(obj, str) else _path_field(obj, path, n)
               for n, obj in json_lines(text, str(path), "one object with a path per line")]
    else:
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if kind == "tsv" else ","))
        raw = [_path_field(r, path, n) for n, r in enumerate(rows, 2)]
    base = path.parent
    seen, entries = set(), []
    for key in raw:
        if key not in seen:  # a path listed twice is classified once
            seen.add(key)
            entries.append((key, str(Path(key).expanduser() if Path(key).expanduser().is_absolute() else base / key)))
    return entries


def _path_field(row: dict, path: Path, line: int) -> str:
    for col in PATH_COLUMNS:
        if col in row and row[col] not in (None, ""):
            return str(row[col]).strip()
    raise KdpipeError(
        f"{path}:{line} has no path column (found {', '.join(map(str, row)) or 'nothing'}); "
        f"name the column one of: {', '.join(PATH_COLUMNS)}"
    )


def _looks_like_shards(spec: str) -> bool:
    return spec.startswith("pipe:") or ("{" in spec and "}" in spec) or spec.endswith(".tar") or any(c in spec for c in "*?[")


def open_source(spec: str | Path) -> ImageSource:
    """The source a ``--input`` value names; one clear line when it names nothing usable."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        entries = folder_entries(path)
        if entries:
            return PathSource(spec, entries, "folder")
        tars = sorted(path.glob("*.tar"))
        if tars:
            from kdpipe.infer.shard_source import ShardSource

            return ShardSource(spec, [str(t) for t in tars])
        raise KdpipeError(
            f"no images found in {spec} (looked recursively for {', '.join(sorted(IMAGE_EXTENSIONS))}, and for .tar shards)"
        )
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return PathSource(spec, [(path.name, str(path))], "image")
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        entries = list_entries(path)
        if not entries:
            raise KdpipeError(f"no images found in {spec}: the list is empty")
        return PathSource(spec, entries, "list")
    if _looks_like_shards(spec):
        from kdpipe.infer.shard_source import ShardSource

        return ShardSource(spec, None)
    if path.is_file():
        raise KdpipeError(
            f"--input {spec}: expected a folder of images, a list file ({', '.join(LIST_SUFFIXES)}) or webdataset shards (.tar, brace pattern, pipe:)"
        )
    raise KdpipeError(f"no images found: --input {spec} does not exist")
