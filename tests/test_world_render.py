"""The demo world's renderer, shift and downstream dataset layout."""

import json

import numpy as np
import pytest
from PIL import Image

from kdpipe.errors import KdpipeError
from kdpipe.world import (
    CLASSNAMES,
    COLOURS,
    NUM_BASE,
    SHAPES,
    Shift,
    caption_table,
    render_images,
    shift_images,
    write_world_dataset,
)

LABELS = np.arange(64).repeat(2)


def test_render_is_deterministic_per_seed_and_differs_across_seeds():
    a = render_images(LABELS, seed=3)
    b = render_images(LABELS, seed=3)
    c = render_images(LABELS, seed=4)
    assert a.shape == (128, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # every image differs from the others (random position, size, rotation, background)
    assert len({img.tobytes() for img in a}) == len(a)


def test_64_distinct_class_names_colour_then_shape_with_checkerboard_halves():
    assert len(CLASSNAMES) == 64 and len(set(CLASSNAMES)) == 64
    assert {n.split(" ")[0] for n in CLASSNAMES} == set(COLOURS)
    assert {n.split(" ")[1] for n in CLASSNAMES} == set(SHAPES)
    base = CLASSNAMES[:NUM_BASE]
    novel = CLASSNAMES[NUM_BASE:]
    # each half holds every colour and every shape four times: novel = new combinations
    for half in (base, novel):
        assert sorted(n.split(" ")[0] for n in half) == sorted(list(COLOURS) * 4)
        assert sorted(n.split(" ")[1] for n in half) == sorted(list(SHAPES) * 4)


def test_the_shape_is_drawn_in_its_colour_on_a_dark_background():
    images = render_images(np.arange(64).repeat(8), seed=0).astype(np.float32) / 255
    for label, name in enumerate(CLASSNAMES):
        imgs = images[label * 8 : (label + 1) * 8]
        flat = imgs.reshape(len(imgs), -1, 3)
        bright = flat.sum(-1)
        background = np.median(bright, axis=1)
        # the shape covers a visible part of the image and stands out from the dark background
        assert (background < 0.9).all(), name
        top = np.take_along_axis(flat, np.argsort(-bright, axis=1)[:, :12, None], axis=1).mean(axis=(0, 1))
        expected = np.array(COLOURS[name.split(" ")[0]])
        assert np.abs(top - expected).max() < 0.3, (name, top, expected)


def test_captions_name_the_class_in_every_template():
    table = caption_table()
    assert len(table) == 64
    for name, row in zip(CLASSNAMES, table):
        colour, shape = name.split(" ")
        assert "a photo of a " + name + "." in row
        assert all(colour in c and shape in c for c in row)


def test_shift_lowers_contrast_adds_noise_and_is_deterministic():
    clean = render_images(LABELS, seed=1)
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    shifted = shift_images(clean, rng())
    assert np.array_equal(shifted, shift_images(clean, rng()))
    assert not np.array_equal(shifted, shift_images(clean, np.random.default_rng(8)))
    contrast_only = shift_images(clean, rng(), Shift(contrast=0.5, blur_sigma=0.0, noise=0.0)).astype(np.float32)
    dev_clean = np.abs(clean - clean.mean(axis=(1, 2, 3), keepdims=True)).mean()
    dev_half = np.abs(contrast_only - contrast_only.mean(axis=(1, 2, 3), keepdims=True)).mean()
    assert dev_half == pytest.approx(dev_clean / 2, rel=0.05)
    noisy = shift_images(clean, rng(), Shift(contrast=1.0, blur_sigma=0.0, noise=0.12)).astype(np.float32)
    assert 0.08 * 255 < np.std(noisy - clean) < 0.13 * 255


def _read_split(folder):
    return json.loads((folder / "split_world.json").read_text())


def test_dataset_is_a_coop_json_split_with_readable_images(tmp_path):
    folder = write_world_dataset(tmp_path, seed=0, per_class={"train": 2, "val": 3, "test": 3})
    assert folder == tmp_path / "world"
    split = _read_split(folder)
    assert set(split) == {"train", "val", "test"}
    for name, per_class in (("train", 2), ("val", 3), ("test", 3)):
        rows = split[name]
        assert len(rows) == 64 * per_class
        assert np.bincount([r[1] for r in rows], minlength=64).tolist() == [per_class] * 64
        for relpath, label, classname in rows:
            assert classname == CLASSNAMES[label]
            assert (folder / "images" / relpath).is_file()
    img = Image.open(folder / "images" / split["test"][0][0])
    assert img.size == (32, 32) and img.mode == "RGB"
    # the splits hold different images
    first = lambda s: np.asarray(Image.open(folder / "images" / split[s][0][0]))  # noqa: E731
    assert not np.array_equal(first("train"), first("test"))


def test_dataset_is_reused_for_the_same_settings_and_rebuilt_for_others(tmp_path):
    folder = write_world_dataset(tmp_path, seed=0, per_class=1)
    marker = folder / "images" / _read_split(folder)["test"][0][0]
    stamp = marker.stat().st_mtime_ns
    write_world_dataset(tmp_path, seed=0, per_class=1)
    assert marker.stat().st_mtime_ns == stamp  # same settings: nothing rewritten
    before = np.asarray(Image.open(marker))
    write_world_dataset(tmp_path, seed=1, per_class=1)
    assert not np.array_equal(before, np.asarray(Image.open(marker)))
    assert [p.name for p in tmp_path.iterdir()] == ["world"]  # no temporary folders left behind


def test_dataset_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "mine.txt").write_text("keep me")
    with pytest.raises(KdpipeError, match="not written by kdpipe"):
        write_world_dataset(tmp_path, seed=0, per_class=1)
    assert (tmp_path / "world" / "mine.txt").read_text() == "keep me"


def test_bad_per_class_is_one_clear_error(tmp_path):
    with pytest.raises(KdpipeError, match="per_class"):
        write_world_dataset(tmp_path, per_class={"tset": 5})
    with pytest.raises(KdpipeError, match="at least 1"):
        write_world_dataset(tmp_path, per_class=0)


def test_dataset_loads_through_the_world_loader_with_base_novel_halves(tmp_path):
    from kdpipe.data import load_dataset, subsample

    write_world_dataset(tmp_path, seed=0, per_class={"train": 1, "val": 1, "test": 2})
    splits = load_dataset("world", tmp_path)
    assert list(splits.classnames) == list(CLASSNAMES)
    assert len(splits.train) == 64 and len(splits.test) == 128
    assert all(CLASSNAMES[item.label] == item.classname for item in splits.test)
    assert list(subsample(splits, "base").classnames) == list(CLASSNAMES[:NUM_BASE])
    assert list(subsample(splits, "novel").classnames) == list(CLASSNAMES[NUM_BASE:])
