"""JPEG decoding and preprocessing on the GPU, for ``classify --decode gpu``.

On a GPU the model classifies thousands of images per second, more than a few CPU processes can
decode with PIL. In this mode the DataLoader workers only read each image's bytes; the main
process decodes the JPEGs of a batch in one ``torchvision.io.decode_jpeg(..., device="cuda")``
call (nvJPEG) and resizes, crops and normalises them on the GPU: the test half of
:class:`~kdpipe.data.transforms.ImageTransform` (bicubic shorter-side resize with antialiasing,
centre crop, mean/std). Images that are not JPEGs are decoded by PIL in the worker, exactly as on
the CPU path, and preprocessed on the GPU like the rest. A JPEG that nvJPEG refuses is decoded by
PIL instead; one PIL cannot read either is skipped with PIL's reason, as on the CPU path.

Pixels differ from the CPU path by resampling rounding only (the GPU test holds the features to
that); EXIF orientation is ignored on both paths.

Overlap (:func:`decoded_ahead`): the batches arrive in page-locked memory (the DataLoader pins
them, ``PackedImages.pin_memory`` included), and batch k+1 is copied, decoded and resized on a
second CUDA stream, queued before batch k is handed to the model on the default stream, so the
GPU's decoder and copy engines work while its SMs run the model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Iterator, Sequence

import torch

JPEG_MAGIC = b"\xff\xd8"


DECODE_CHOICES = ("auto", "cpu", "gpu")


def for_device(transform, choice: str, device: torch.device):
    """The transform classify's workers run: on the CPU ``transform`` itself; on a CUDA device its
    :class:`EncodedImage` twin, decoding with nvJPEG (``gpu``, and ``auto``) or PIL (``cpu``)."""
    from kdpipe.errors import KdpipeError

    if choice not in DECODE_CHOICES:
        raise KdpipeError(f"--decode {choice!r}: expected one of {', '.join(DECODE_CHOICES)}")
    gpu = gpu_decode_available(device)
    if choice == "gpu" and not gpu:
        raise KdpipeError(f"--decode gpu needs a CUDA device and torchvision's decode_jpeg (device is {device}); use --decode cpu")
    preprocessing = all(hasattr(transform, a) for a in ("image_size", "mean", "std"))  # an ImageTransform
    if choice == "gpu" and not preprocessing:
        raise KdpipeError(f"--decode gpu: the model's preprocessing ({type(transform).__name__}) has no GPU twin; use --decode cpu")
    if device.type != "cuda" or not preprocessing or (choice == "auto" and not gpu):
        return transform
    # on a GPU even PIL decoding ships uint8 pixels and normalises on the device
    return EncodedImage(transform.image_size, transform.mean, transform.std, "pil" if choice == "cpu" else "gpu")


def gpu_decode_available(device: torch.device) -> bool:
    """Whether this torchvision can decode JPEGs on ``device``."""
    if device.type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


class EncodedImage:
    """The worker half. ``decode="gpu"``: JPEG bytes stay encoded (a 1-D uint8 tensor) for nvJPEG;
    any other format is decoded here by PIL into a ``[3, H, W]`` uint8 tensor (``load_rgb``:
    transparency onto white). ``decode="pil"``: PIL decodes, resizes and crops here, exactly as
    the CPU path, and only the ``[3, S, S]`` uint8 pixels travel to the main process (a quarter
    of the float32 bytes), where the GPU normalises them."""

    reads_bytes = True  # sources hand this transform the file's bytes, not a decoded image

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], decode: str = "gpu"):
        self.image_size = int(image_size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.decode = decode

    def __call__(self, data: bytes) -> torch.Tensor:
        if self.decode == "gpu" and data[:2] == JPEG_MAGIC:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if self.decode == "pil":
            return _pil_resized(data, self.image_size)
        return _pil_decode(data)  # raises DECODE_ERRORS for an unreadable file, as load_rgb does

    def on_device(self, images, keys: list[str], device: torch.device
                  ) -> tuple[torch.Tensor | None, list[str], list[tuple[str, str]]]:
        """``(normalised [B, 3, S, S] on device, the keys kept, (key, reason) of the images dropped)``."""
        from kdpipe.data.shards.samples import PackedImages

        if isinstance(images, torch.Tensor):  # uint8 pixels the workers cropped already: normalise
            return self._normalise(images.to(device, non_blocking=True).float()), keys, []
        if isinstance(images, PackedImages):
            images = images.unpack()
        decoded = _decode_all(images, device)
        kept = [i for i, img in enumerate(decoded) if not isinstance(img, str)]
        skipped = [(keys[i], decoded[i]) for i in range(len(keys)) if isinstance(decoded[i], str)]
        if not kept:
            return None, [], skipped
        batch = self._preprocess([decoded[i] for i in kept], device)
        return batch, [keys[i] for i in kept], skipped

    def _preprocess(self, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F
        from torchvision.transforms import InterpolationMode

        size = self.image_size
        out = torch.empty(len(images), 3, size, size, device=device)
        # one resize call per distinct input size (a shard set of one camera is one call)
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            by_shape[tuple(img.shape)].append(i)
        for shape, rows in by_shape.items():
            x = torch.stack([images[i] for i in rows]).to(device, non_blocking=True).float()
            if shape[1:] != (size, size):  # not resized and cropped by PIL in the worker already
                x = F.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
                x = F.center_crop(x, [size, size])
                # PIL rounds and clamps the resized pixels to uint8 before ToTensor; so does this
                x = x.round_().clamp_(0, 255)
            out[rows] = x
        return self._normalise(out)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(pixels / 255 - mean) / std`` for float pixels in 0..255, in place."""
        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1) * 255
        return pixels.sub_(mean).div_(std)


def _pil_resized(data: bytes, size: int) -> torch.Tensor:
    """The CPU path's test preprocessing up to the float conversion: the same uint8 pixels."""
    import numpy as np
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from kdpipe.data.images import load_rgb

    img = F.center_crop(F.resize(load_rgb(data), size, InterpolationMode.BICUBIC), [size, size])
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _pil_decode(data: bytes) -> torch.Tensor:
    import numpy as np

    from kdpipe.data.images import load_rgb

    return torch.from_numpy(np.asarray(load_rgb(data)).copy()).permute(2, 0, 1)


def _decode_all(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
    """Each image as a ``[3, H, W]`` uint8 tensor (on ``device`` for JPEGs), or the reason it is unreadable."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | str] = list(images)
    jpegs = [i for i, img in enumerate(images) if img.dim() == 1]
    if not jpegs:
        return out
    try:
        decoded = decode_jpeg([images[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = None  # one bad file fails the batched call: decode one by one to find it
    for n, i in enumerate(jpegs):
        if decoded is not None:
            out[i] = decoded[n]
            continue
        try:
            out[i] = decode_jpeg(images[i], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            out[i] = _pil_fallback(images[i])
    return out


def _pil_fallback(encoded: torch.Tensor) -> torch.Tensor | str:
    """PIL's decode of a JPEG nvJPEG refused, or PIL's reason, worded as the CPU path words it."""
    from kdpipe.data.images import DECODE_ERRORS, describe_error

    try:
        return _pil_decode(encoded.numpy().tobytes())
    except DECODE_ERRORS as e:
        return f"not a readable image ({describe_error(e)})"


Decoded = tuple  # (images on the device or None, keys kept, [(key, reason)] dropped)


def decoded_ahead(batches: Iterable, on_device: Callable, device: torch.device) -> Iterator[tuple[object, Decoded]]:
    """``(batch, on_device(batch.images, batch.keys, device))`` for each batch, with batch k+1's
    ``on_device`` queued before batch k is yielded: on CUDA on a second stream, so its copy, decode
    and resize overlap the model's work on batch k; elsewhere in the same order, synchronously."""
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    pending = None
    for batch in batches:
        if batch.images is None or not batch.keys:
            done: Decoded = (None, [], [])
        elif cuda:
            with torch.cuda.stream(side):
                done = on_device(batch.images, batch.keys, device)
        else:
            done = on_device(batch.images, batch.keys, device)
        if pending is not None:
            yield _ready(pending, side, device)
        pending = (batch, done)
    if pending is not None:
        yield _ready(pending, side, device)


def _ready(pending: tuple[object, Decoded], side, device: torch.device) -> tuple[object, Decoded]:
    """The batch, its decoded images usable on the default stream (which waits for the side stream)."""
    batch, (images, keys, bad) = pending
    if side is not None:
        main = torch.cuda.current_stream(device)
        main.wait_stream(side)
        if images is not None:
            images.record_stream(main)  # made on the side stream: not reused before main is done with it
    return batch, (images, keys, bad)
