"""Pack images into webdataset tar shards: ``<key>.jpg|png`` (+ ``.cls`` label, ``.json`` meta).

Keys are the image's index in the source list (``%08d``), so they are unique across shards and the
same source always gives the same shards. Each shard is written to a temporary file and renamed
into place, and ``manifest.json`` (rewritten atomically after every shard) records the plan and
what is done: an interrupted run continues where it stopped, and a finished one is left alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from kdpipe.data.images import DECODE_ERRORS, describe_error
from kdpipe.data.transforms import to_rgb
from kdpipe.data.items import Item
from kdpipe.data.shards.patterns import MANIFEST
from kdpipe.errors import KdpipeError
from kdpipe.io import atomic_path, ensure_dir, read_json, write_json

FORMAT = "kdpipe-shards/1"
KEY_FORMAT = "{:08d}"
SHARD_NAME = "shard-{:06d}.tar"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Entry:
    path: str
    label: int | None
    classname: str | None


def _entries(source: Sequence[Item | str | os.PathLike], keep_labels: bool) -> list[Entry]:
    out = []
    for s in source:
        if isinstance(s, Item):
            out.append(Entry(s.path, s.label if keep_labels else None, s.classname if keep_labels else None))
        else:
            out.append(Entry(str(s), None, None))
    return out


def _fingerprint(entries: list[Entry], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for e in entries:
        h.update(f"{e.path}\0{e.label}\0{e.classname}\n".encode())
    return h.hexdigest()[:20]


def encode_image(path: str, max_side: int, quality: int = JPEG_QUALITY) -> tuple[bytes, str, int, int]:
    """(bytes, extension, width, height): shrunk so the shorter side is at most ``max_side``.

    Files that need no resizing and are already JPEG or PNG are stored byte for byte (no second
    lossy encode); everything else becomes an RGB JPEG.
    """
    with open(path, "rb") as f:
        raw = f.read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(raw)) as img:
            fmt, (w, h) = img.format, img.size
            short = min(w, h)
            if not max_side or short <= max_side:
                img.load()  # decode fully: a truncated file fails here, not in training
                if fmt in ("JPEG", "PNG"):
                    return raw, "jpg" if fmt == "JPEG" else "png", w, h
                size = (w, h)
            else:
                scale = max_side / short
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                img.draft("RGB", size)  # JPEG: decode at a reduced scale first (much faster)
                img.load()
            rgb = to_rgb(img)  # a JPEG has no alpha: flatten the way training decodes the original
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "jpg", w, h


def _write_shard(path: Path, samples: list[dict]) -> int:
    """Write ``samples`` to ``path`` via a temporary file + rename; returns the file size."""
    from webdataset import TarWriter

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = TarWriter(f, mtime=0)  # fixed mtime: the same source gives byte-identical shards
        for sample in samples:
            writer.write(sample)
        writer.close()
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def _encode_entry(args) -> tuple[dict | None, str | None]:
    index, entry, max_side = args
    try:
        data, ext, w, h = encode_image(entry.path, max_side)
    except (*DECODE_ERRORS, FileNotFoundError) as e:
        return None, describe_error(e)
    key = KEY_FORMAT.format(index)
    meta = {"path": entry.path, "width": w, "height": h}
    sample = {"__key__": key, ext: data}
    if entry.label is not None:
        sample["cls"] = str(entry.label).encode()
        meta.update(label=entry.label, classname=entry.classname)
    sample["json"] = json.dumps(meta).encode()
    return sample, None


def _load_resumable(manifest_path: Path, fingerprint: str, out_dir: Path) -> dict | None:
    if not manifest_path.is_file():
        return None
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as e:
        raise KdpipeError(f"cannot read {manifest_path}: {e}; delete it or write to another folder") from None
    if manifest.get("fingerprint") != fingerprint:
        raise KdpipeError(
            f"{out_dir} already holds shards of another source or other settings; write to an empty folder or delete it"
        )
    return manifest


def write_shards(
    source_items_or_paths: Sequence[Item | str | os.PathLike],
    out_dir: str | os.PathLike,
    per_shard: int = 1000,
    max_side: int = 256,
    keep_labels: bool = True,
    classnames: Sequence[str] | None = None,
    workers: int | None = None,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    source_name: str = "",
    shuffle_seed: int | None = None,
) -> Path:
    """Write the images as shards of ``per_shard`` samples into ``out_dir``; returns the manifest path.

    ``max_side`` caps the shorter side (aspect kept; 0 keeps sizes). Labels (``.cls``) and class
    names (in ``.json`` and the manifest) are stored when the source has them and ``keep_labels``.
    Unreadable images are skipped and listed in the manifest (``strict=True``: KdpipeError).
    ``progress(n)`` is called as images are done. ``shuffle_seed`` stores the images in an order
    shuffled with that seed: a stream can only shuffle within its buffer, so shards written in
    class order would give batches of a few classes (biased gradients and BatchNorm statistics).
    """
    if per_shard < 1:
        raise KdpipeError(f"per_shard must be at least 1, got {per_shard}")
    entries = _entries(source_items_or_paths, keep_labels)
    if not entries:
        raise KdpipeError("nothing to write: the source has no images")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(entries)
    labelled = any(e.label is not None for e in entries)
    settings = {"format": FORMAT, "per_shard": per_shard, "max_side": max_side, "labels": labelled, "shuffle_seed": shuffle_seed}
    fingerprint = _fingerprint(entries, settings)
    out = ensure_dir(Path(out_dir).expanduser(), "shard folder")
    manifest_path = out / MANIFEST
    manifest = _load_resumable(manifest_path, fingerprint, out)
    if manifest is None:
        stray = sorted(p.name for p in out.glob("*.tar"))
        if stray:
            raise KdpipeError(f"{out} already holds {len(stray)} .tar files but no kdpipe manifest; use an empty folder")
        chunks = range(0, len(entries), per_shard)
        manifest = {
            **settings,
            "source": source_name,
            "fingerprint": fingerprint,
            "complete": False,
            "classnames": list(classnames) if (classnames is not None and labelled) else None,
            "shards": [
                {"name": SHARD_NAME.format(i), "first": start, "planned": min(per_shard, len(entries) - start)}
                for i, start in enumerate(chunks)
            ],
            "skipped": [],
        }
        write_json(manifest_path, manifest)
    elif manifest.get("complete") and all((out / s["name"]).is_file() for s in manifest["shards"]):
        if progress is not None:
            progress(len(entries))
        return manifest_path
    manifest["complete"] = False
    for stale in out.glob(".shard-*.tmp"):
        stale.unlink(missing_ok=True)  # left by a run that was killed mid-shard

    workers = workers or min(8, os.cpu_count() or 1)
    skipped = {tuple(s) for s in manifest["skipped"]}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for shard in manifest["shards"]:
            path = out / shard["name"]
            if "count" in shard and path.is_file():
                if progress is not None:
                    progress(shard["planned"])
                continue
            first, planned = shard["first"], shard["planned"]
            jobs = [(i, entries[i], max_side) for i in range(first, first + planned)]
            samples = []
            for (i, entry, _), (sample, error) in zip(jobs, pool.map(_encode_entry, jobs)):
                if error is not None:
                    if strict:
                        raise KdpipeError(f"cannot read image {entry.path} ({error}); remove it or drop --strict")
                    skipped.add((entry.path, error))
                else:
                    samples.append(sample)
                if progress is not None:
                    progress(1)
            shard["bytes"] = _write_shard(path, samples)
            shard["count"] = len(samples)
            manifest["skipped"] = sorted(skipped)
            write_json(manifest_path, manifest)

    manifest["count"] = sum(s["count"] for s in manifest["shards"])
    manifest["bytes"] = sum(s["bytes"] for s in manifest["shards"])
    if labelled:
        counts: dict[int, int] = {}
        bad = {p for p, _ in skipped}
        for e in entries:
            if e.label is not None and e.path not in bad:
                counts[e.label] = counts.get(e.label, 0) + 1
        manifest["class_counts"] = {str(k): v for k, v in sorted(counts.items())}
    if manifest["count"] == 0:
        write_json(manifest_path, manifest)
        first_bad = manifest["skipped"][0] if manifest["skipped"] else ("?", "?")
        raise KdpipeError(f"none of the {len(entries)} images could be read, e.g. {first_bad[0]} ({first_bad[1]})")
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    return manifest_path
