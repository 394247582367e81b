"""Turn raw webdataset samples into (image, key, label), with one reason string when that fails."""

from __future__ import annotations

import json

import torch
from PIL import Image

from kdpipe.data.images import DECODE_ERRORS, describe_error, load_rgb

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff")


class BadSample(Exception):
    """The sample cannot be used; the message says why (shown in corrupt-member reports)."""


def image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            data = sample[ext]
            if not data:
                raise BadSample(f"empty {ext} member")
            return data
    members = sorted(k for k in sample if not k.startswith("__"))
    raise BadSample(f"no image member (has {', '.join(members) or 'nothing'})")


def optional_label(sample: dict) -> int | None:
    """The ``cls`` member (or the ``label`` in the json meta) as an int; None when there is none."""
    raw = sample.get("cls")
    if raw is None and "json" in sample:
        try:
            raw = json.loads(sample["json"]).get("label")
        except (ValueError, AttributeError):
            raw = None
        raw = None if raw is None else str(raw)
    if raw is None or raw in ("", b""):
        return None
    try:
        return int(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        raise BadSample(f"label {raw[:20]!r} is not an integer") from None


def sample_label(sample: dict) -> int:
    label = optional_label(sample)
    if label is None:
        raise BadSample("no label (cls member)")
    return label


def decode_sample(sample: dict, with_labels: bool) -> tuple[Image.Image, int | None]:
    data = image_bytes(sample)
    label = sample_label(sample) if with_labels else None
    try:
        return load_rgb(data), label
    except DECODE_ERRORS as e:
        raise BadSample(f"undecodable image: {describe_error(e)}") from None


def encoded_sample(sample: dict, transform) -> torch.Tensor:
    """The image member through a transform that reads bytes (``classify --decode gpu``)."""
    data = image_bytes(sample)
    try:
        return transform(data)
    except DECODE_ERRORS as e:
        raise BadSample(f"undecodable image: {describe_error(e)}") from None


class PackedImages:
    """Images of different sizes (encoded JPEGs, decoded frames) in one flat uint8 tensor.

    A DataLoader worker hands each tensor of a batch to the main process through a shared-memory
    block of its own; 256 small tensors per batch cost more than the pixels. Packed, a batch is
    one block, and ``unpack`` gives views of it, no copy."""

    def __init__(self, images: list[torch.Tensor]):
        self.shapes = [tuple(img.shape) for img in images]
        self.data = torch.cat([img.reshape(-1) for img in images])

    def unpack(self) -> list[torch.Tensor]:
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        return [part.view(s) for part, s in zip(torch.split(self.data, sizes), self.shapes)]

    def __len__(self) -> int:
        return len(self.shapes)

    def pin_memory(self) -> "PackedImages":
        """Called by a DataLoader with ``pin_memory=True`` (classify on CUDA): page-locked bytes
        copy to the GPU asynchronously, beside the model (``device_decode.decoded_ahead``)."""
        self.data = self.data.pin_memory()
        return self


def stack_images(images: list) -> torch.Tensor | PackedImages:
    """One batch tensor when the images share a shape (preprocessed floats, or uint8 pixels
    already cropped in the worker), else one :class:`PackedImages` (``classify --decode gpu``)."""
    if all(img.shape == images[0].shape for img in images):
        return torch.stack(images)
    return PackedImages(images)
