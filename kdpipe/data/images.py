"""Decoding images safely, and the map-style dataset used for few-shot training and evaluation."""

from __future__ import annotations

import io
import logging
import re
import warnings
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from kdpipe.data.items import Item
from kdpipe.data.transforms import apply_seeded, sample_seed, to_rgb
from kdpipe.errors import KdpipeError

log = logging.getLogger("kdpipe.data")

# What a broken image file raises while it is opened or decoded.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_rgb(source: str | bytes) -> Image.Image:
    """Open a path or encoded bytes and fully decode to RGB (so truncation fails here, not later).

    The one decoder of training, evaluation, shards and classify: the same file gives the same
    pixels everywhere.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's palette-transparency and EXIF warnings, per image
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as img:
            img.load()
            return to_rgb(img)


def describe_error(e: BaseException) -> str:
    """``Type: first line of the message``, without PIL's ``<_io.BytesIO object at 0x..>`` noise."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", text)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ImageDataset(torch.utils.data.Dataset):
    """``items[i] -> (transform(image), label)``, with augmentation seeded per (seed, epoch, i).

    An unreadable image never stops training: it is recorded in ``skipped`` as (path, reason) and
    the next readable item is returned in its place, so batch sizes stay fixed. With
    ``strict=True`` it raises KdpipeError instead. ``verify()`` decodes everything up front and
    drops unreadable items, which also makes ``skipped`` complete when DataLoader workers are used
    (each worker records only what it met itself).
    """

    def __init__(self, items: Sequence[Item], transform: Callable, seed: int = 0, strict: bool = False, epoch: int = 0):
        self.items = list(items)
        self.transform = transform
        self.seed = int(seed)
        self.strict = strict
        self.epoch = int(epoch)
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _record(self, index: int, reason: str) -> None:
        path = self.items[index].path
        if self.strict:
            raise KdpipeError(f"cannot read image {path} ({reason}); remove it or run without strict")
        if index not in self._bad:
            self._bad.add(index)
            self.skipped.append((path, reason))
            log.warning("skipping unreadable image %s (%s)", path, reason)

    def __getitem__(self, index: int):
        n = len(self.items)
        if not 0 <= index < n:
            raise IndexError(index)
        # the substitute is a fixed function of the index, so results stay independent of workers
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            try:
                img = load_rgb(self.items[i].path)
            except DECODE_ERRORS as e:
                self._record(i, describe_error(e))
                continue
            tensor = apply_seeded(self.transform, img, sample_seed(self.seed, self.epoch, index))
            return tensor, self.items[i].label
        raise KdpipeError(f"none of the {n} images in this dataset can be read, e.g. {self.items[index].path}")

    def verify(self, progress: Callable | None = None) -> list[tuple[str, str]]:
        """Decode every image once, drop the unreadable ones and return them as (path, reason)."""
        bad = []
        for i, item in enumerate(self.items):
            try:
                load_rgb(item.path)
            except DECODE_ERRORS as e:
                self._record(i, describe_error(e))
                bad.append((item.path, describe_error(e)))
            if progress is not None:
                progress(1)
        if bad:
            keep = [it for i, it in enumerate(self.items) if i not in self._bad]
            if not keep:
                raise KdpipeError(f"none of the {len(self.items)} images can be read, e.g. {bad[0][0]} ({bad[0][1]})")
            self.items, self._bad = keep, set()
        return bad
