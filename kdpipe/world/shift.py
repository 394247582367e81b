"""The downstream domain: the same world seen through a worse camera (low contrast, blur, noise).

Pretraining sees clean renders only; the downstream dataset is rendered with fresh randomness and
then degraded here, so zero-shot transfer loses accuracy and prompt learning / distillation on the
shifted images has something to recover. The strength follows what was measured when sizing the
demo (issue #8): contrast x0.5, Gaussian noise 0.12, a light blur cost ~40 points of zero-shot
accuracy and left room to learn, while harsher renderings were near-hopeless for every method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Shift:
    contrast: float = 0.5  # pixel deviations from the image mean are multiplied by this
    blur_sigma: float = 0.8  # Gaussian blur, in pixels
    noise: float = 0.12  # std of additive Gaussian noise, on the [0, 1] intensity scale

    def describe(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_SHIFT = Shift()


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [N, H, W, C] with edge replication."""
    if sigma <= 0:
        return img
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        padded = np.pad(img, pad, mode="edge")
        length = img.shape[axis]
        out = np.zeros_like(img)
        for i, w in enumerate(k):
            out += w * np.take(padded, np.arange(i, i + length), axis=axis)
        img = out
    return img


def shift_images(images: np.ndarray, rng: np.random.Generator, shift: Shift = DEFAULT_SHIFT) -> np.ndarray:
    """Degrade uint8 [N, H, W, 3] images; deterministic given ``rng``'s state."""
    x = images.astype(np.float32) / 255.0
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = mean + shift.contrast * (x - mean)
    x = _blur(x, shift.blur_sigma)
    x = x + rng.normal(0.0, shift.noise, size=x.shape).astype(np.float32)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
