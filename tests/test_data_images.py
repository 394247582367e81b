"""Transforms and the map-style ImageDataset: seeded augmentation, unreadable images."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from kdpipe.data import ImageDataset, Item, build_transform
from kdpipe.data.images import load_rgb
from kdpipe.data.transforms import random_crop_box, sample_seed
from kdpipe.dist import worker_init
from kdpipe.errors import KdpipeError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def gradient_image(path: Path, w=40, h=30) -> Path:
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 6 % 256, y * 8 % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_items(tmp_path, n=6):
    return [Item(str(gradient_image(tmp_path / f"{i}.png", 30 + i, 24 + 2 * i)), i % 2, f"c{i % 2}") for i in range(n)]


def test_test_transform_resizes_center_crops_and_normalises(tmp_path, tiny_student):
    img = load_rgb(str(gradient_image(tmp_path / "g.png", 40, 30)))
    t = build_transform(False, tiny_student.dims.image_size, tiny_student.mean, tiny_student.std)
    x = t(img)
    assert x.shape == (3, tiny_student.dims.image_size, tiny_student.dims.image_size)
    assert torch.equal(x, t(img))
    flat = Image.new("RGB", (50, 20), (255, 0, 128))
    y = build_transform(False, 16, MEAN, STD)(flat)
    expected = torch.tensor([(1.0 - 0.5) / 0.2, (0.0 - 0.4) / 0.25, (128 / 255 - 0.3) / 0.3])
    assert torch.allclose(y.mean(dim=(1, 2)), expected, atol=1e-3)


def test_train_transform_is_random_but_reproducible_with_a_generator(tmp_path):
    img = load_rgb(str(gradient_image(tmp_path / "g.png")))
    t = build_transform(True, 16, MEAN, STD)

    def run(seed):
        g = torch.Generator()
        g.manual_seed(seed)
        return t(img, generator=g)

    assert torch.equal(run(1), run(1))
    assert any(not torch.equal(run(1), run(s)) for s in range(2, 6))
    assert run(1).shape == (3, 16, 16)


def test_random_crop_box_stays_inside_and_covers_the_scale_range():
    g = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_crop_box(64, 48, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64 and h > 0 and w > 0
        areas.append(h * w / (64 * 48))
    assert min(areas) < 0.15 and max(areas) > 0.8
    assert random_crop_box(100, 10, (0.9, 1.0), (3 / 4, 4 / 3), g) == (0, 43, 10, 13)  # fallback: center crop


def test_dataset_augmentation_depends_on_seed_epoch_index_only(tmp_path):
    items = make_items(tmp_path)
    t = build_transform(True, 16, MEAN, STD)
    a = ImageDataset(items, t, seed=5)
    b = ImageDataset(items, t, seed=5)
    forward = [a[i][0] for i in range(len(items))]
    backward = [b[i][0] for i in reversed(range(len(items)))][::-1]  # another access order
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    a.set_epoch(1)
    assert not torch.equal(a[0][0], forward[0])
    assert a[3][1] == items[3].label
    assert sample_seed(5, 1, 3) == sample_seed(5, 1, 3) != sample_seed(5, 1, 4)


def test_dataloader_results_do_not_depend_on_worker_count(tmp_path):
    items = make_items(tmp_path)
    ds = ImageDataset(items, build_transform(True, 16, MEAN, STD), seed=2)
    ds.set_epoch(3)

    def collect(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, worker_init_fn=worker_init)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(collect(0), collect(2))


def test_unreadable_images_are_skipped_and_recorded_or_fatal_when_strict(tmp_path):
    items = make_items(tmp_path, 4)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    good = Path(items[1].path).read_bytes()
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good[: len(good) // 2])
    items = [items[0], Item(str(bad), 1, "c1"), items[1], Item(str(truncated), 0, "c0"), items[2]]
    ds = ImageDataset(items, build_transform(False, 16, MEAN, STD))
    x1, y1 = ds[1]  # replaced by the next readable item
    assert torch.equal(x1, ds[2][0]) and y1 == items[2].label
    ds[3]
    assert [p for p, _ in ds.skipped] == [str(bad), str(truncated)]
    with pytest.raises(KdpipeError, match="cannot read image .*bad.jpg"):
        ImageDataset(items, build_transform(False, 16, MEAN, STD), strict=True)[1]
    fresh = ImageDataset(items, build_transform(False, 16, MEAN, STD))
    assert [p for p, _ in fresh.verify()] == [str(bad), str(truncated)] and len(fresh) == 3
