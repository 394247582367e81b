"""One image decoder: training, classify and shards see the same pixels for the same file.

Transparent pixels are flattened onto white (what a browser shows). A second decoder that dropped
the alpha channel instead made the same PNG look different in training and in ``classify``.
"""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdpipe.data import ImageDataset, Item, build_transform
from kdpipe.data.images import load_rgb
from kdpipe.data.shards import encode_image
from kdpipe.infer.sources import open_source

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
HIDDEN = (10, 200, 30)  # the colour stored under fully transparent pixels


def rgba_png(path: Path, w=24, h=16) -> Path:
    """Left half transparent over ``HIDDEN``, a half-transparent strip, the rest opaque red."""
    px = np.zeros((h, w, 4), dtype=np.uint8)
    px[:, : w // 2] = (*HIDDEN, 0)
    px[:, w // 2 : w // 2 + 2] = (0, 0, 255, 128)
    px[:, w // 2 + 2 :] = (255, 0, 0, 255)
    Image.fromarray(px, "RGBA").save(path)
    return path


def la_png(path: Path, w=24, h=16) -> Path:
    px = np.zeros((h, w, 2), dtype=np.uint8)
    px[:, : w // 2] = (40, 0)
    px[:, w // 2 :] = (90, 255)
    Image.fromarray(px, "LA").save(path)
    return path


def palette_png(path: Path, w=24, h=16) -> Path:
    """A palette image whose index 0 is the transparent colour (tRNS), as GIF-like PNGs have."""
    img = Image.new("P", (w, h), 0)
    img.putpalette([*HIDDEN, 255, 0, 0] + [0, 0, 0] * 254)
    img.paste(1, (w // 2, 0, w, h))
    img.save(path, transparency=0)
    return path


@pytest.fixture
def transparent_folder(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgba_png(folder / "a_rgba.png")
    la_png(folder / "b_la.png")
    palette_png(folder / "c_palette.png")
    return folder


def test_transparent_pixels_are_flattened_onto_white(transparent_folder):
    rgba = np.asarray(load_rgb(str(transparent_folder / "a_rgba.png")))
    assert (rgba[:, :12] == 255).all()  # fully transparent: white, not the hidden colour or black
    assert tuple(rgba[0, 12]) == (127, 127, 255)  # half-transparent blue over white
    assert tuple(rgba[0, -1]) == (255, 0, 0)
    assert (np.asarray(load_rgb(str(transparent_folder / "b_la.png")))[:, :12] == 255).all()
    palette = np.asarray(load_rgb(str(transparent_folder / "c_palette.png")))
    assert (palette[:, :12] == 255).all() and tuple(palette[0, -1]) == (255, 0, 0)


def test_classify_sees_the_pixels_training_sees(transparent_folder):
    tf = build_transform(False, 16, MEAN, STD)
    paths = sorted(transparent_folder.iterdir())
    training = ImageDataset([Item(str(p), 0, "c") for p in paths], tf)
    batches = list(open_source(transparent_folder).batches(tf, batch_size=8, workers=0, done=set()))
    keys = [k for b in batches for k in b.keys]
    images = torch.cat([b.images for b in batches])
    assert keys == [p.name for p in paths] and not any(b.skipped for b in batches)
    for i, name in enumerate(keys):
        assert torch.equal(images[i], training[i][0]), f"{name}: classify decoded other pixels than training"


def test_shards_resized_on_write_keep_the_white_background(tmp_path):
    path = rgba_png(tmp_path / "big.png", w=64, h=48)
    data, ext, w, h = encode_image(str(path), max_side=24)  # resized: re-encoded as JPEG, no alpha left
    assert (ext, w, h) == ("jpg", 64, 48)
    with Image.open(io.BytesIO(data)) as img:
        px = np.asarray(img.convert("RGB"), dtype=np.int32)
    assert img.size == (32, 24)
    assert (px[:, :12] >= 245).all(), "the transparent half must stay white after resizing, as training decodes it"
