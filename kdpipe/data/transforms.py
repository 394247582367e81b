"""Image transforms at a backbone's resolution and normalisation, with reproducible augmentation.

Train: random resized crop (area 8-100 %, aspect 3/4-4/3, bicubic) + horizontal flip, as CoOp and
its successors train. Test: bicubic resize of the shorter side + center crop, as CLIP evaluates.

Random draws come from an explicit ``torch.Generator``; callers seed it per (seed, epoch, sample)
with :func:`sample_seed` so an image's augmentation depends on neither the worker that decodes it
nor on whether the epoch was resumed half way.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F


def sample_seed(seed: int, epoch: int, sample: int | str) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch (stable across processes)."""
    digest = hashlib.blake2b(f"{seed}\0{epoch}\0{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand(1, generator=g).item()


def _randint(g: torch.Generator | None, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=g).item())


def random_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator | None
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering ``scale`` of the area with aspect ratio in ``ratio``.

    Up to ten draws; if none fits inside the image, the largest central crop with an aspect ratio
    clamped into ``ratio`` is used.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(g, 0, height - h), _randint(g, 0, width - w), h, w
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB, transparent pixels flattened onto white: what the image looks like in a
    browser. (PIL's ``convert("RGB")`` drops alpha and shows whatever colour the transparent pixels
    store, usually black.)"""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


class ImageTransform:
    """PIL image -> normalised float tensor [3, size, size]; ``generator`` drives the random parts."""

    accepts_generator = True

    def __init__(
        self,
        train: bool,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
    ):
        self.train = train
        self.image_size = int(image_size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.scale = scale
        self.ratio = ratio
        self.flip = flip

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        if img.mode != "RGB":
            img = to_rgb(img)  # transparency onto white, as every image kdpipe decodes
        size = self.image_size
        if self.train:
            top, left, h, w = random_crop_box(img.width, img.height, self.scale, self.ratio, generator)
            img = F.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
            if self.flip > 0 and torch.rand(1, generator=generator).item() < self.flip:
                img = F.hflip(img)
        else:
            img = F.resize(img, size, InterpolationMode.BICUBIC)
            img = F.center_crop(img, [size, size])
        return F.normalize(F.to_tensor(img), self.mean, self.std)

    def __repr__(self) -> str:
        kind = f"train: random resized crop {self.scale} + flip" if self.train else "test: resize + center crop"
        return f"ImageTransform({kind}, {self.image_size}px, bicubic, mean={self.mean}, std={self.std})"


def build_transform(train: bool, image_size: int, mean, std, **kwargs) -> ImageTransform:
    """The train or test transform at ``image_size`` with the backbone's ``mean``/``std``."""
    return ImageTransform(train, image_size, mean, std, **kwargs)


def transform_for(backbone, train: bool, **kwargs) -> ImageTransform:
    """:func:`build_transform` at a loaded Backbone's resolution and normalisation."""
    return build_transform(train, backbone.dims.image_size, backbone.mean, backbone.std, **kwargs)


def apply_seeded(transform: Callable, img: Image.Image, seed: int) -> torch.Tensor:
    """Run ``transform`` with its randomness fixed by ``seed``.

    kdpipe transforms take the generator directly; any other callable (an open_clip or timm
    preprocess) runs with the global torch and Python RNGs seeded, then restored.
    """
    if getattr(transform, "accepts_generator", False):
        g = torch.Generator()
        g.manual_seed(seed)
        return transform(img, generator=g)
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            return transform(img)
        finally:
            random.setstate(py_state)
