"""Base/novel halves and seeded few-shot subsets."""

import json

import pytest

from kdpipe.data import DatasetSplits, Item, few_shot, subsample
from kdpipe.errors import KdpipeError


def fake_splits(num_classes: int, per_class: int = 6, name: str = "fake") -> DatasetSplits:
    def items(split):
        return [Item(f"/d/{split}/{c}/{i}.jpg", c, f"class {c}") for c in range(num_classes) for i in range(per_class)]

    return DatasetSplits(items("train"), items("val"), items("test"), [f"class {c}" for c in range(num_classes)], name)


@pytest.mark.parametrize("n,base,novel", [(37, 19, 18), (101, 51, 50), (2, 1, 1), (10, 5, 5)])
def test_base_novel_halves_relabelled(n, base, novel):
    splits = fake_splits(n, per_class=2)
    b, v = subsample(splits, "base"), subsample(splits, "novel")
    assert (b.num_classes, v.num_classes) == (base, novel)
    assert b.classnames == [f"class {c}" for c in range(base)]
    assert v.classnames == [f"class {c}" for c in range(base, n)]
    for part, k in ((b, base), (v, novel)):
        for split in (part.train, part.val, part.test):
            assert sorted({it.label for it in split}) == list(range(k))
            assert all(part.classnames[it.label] == it.classname for it in split)
    assert len(b.test) + len(v.test) == len(splits.test)
    assert subsample(splits, "all") is splits
    with pytest.raises(KdpipeError, match="unknown class subset 'new'"):
        subsample(splits, "new")


def test_few_shot_is_identical_per_seed_and_differs_across_seeds():
    splits = fake_splits(5, per_class=20)
    a, b, c = few_shot(splits, 4, seed=1), few_shot(splits, 4, seed=1), few_shot(splits, 4, seed=2)
    assert a.train == b.train and a.val == b.val
    assert a.train != c.train
    assert a.per_class_counts("train") == {k: 4 for k in range(5)}
    assert a.test == splits.test


def test_few_shot_val_is_capped_at_four_and_small_classes_are_kept_whole():
    splits = fake_splits(3, per_class=20)
    s16 = few_shot(splits, 16, seed=1)
    assert s16.per_class_counts("train") == {0: 16, 1: 16, 2: 16}
    assert s16.per_class_counts("val") == {0: 4, 1: 4, 2: 4}
    s1 = few_shot(splits, 1, seed=1)
    assert s1.per_class_counts("val") == {0: 1, 1: 1, 2: 1}
    small = fake_splits(2, per_class=3)
    assert few_shot(small, 16, seed=1).per_class_counts("train") == {0: 3, 1: 3}
    assert few_shot(small, 0, seed=1) is small


def test_few_shot_cache_is_written_and_reused(tmp_path):
    splits = fake_splits(4, per_class=10, name="pets")
    first = few_shot(splits, 2, seed=7, cache_dir=tmp_path)
    cache = tmp_path / "pets_shots2_seed7.json"
    data = json.loads(cache.read_text())
    assert [tuple(x) for x in data["train"]] == [(it.path, it.label) for it in first.train]
    # the cached choice wins as long as the underlying split is the same ...
    chosen = [splits.train[0], splits.train[10], splits.train[20], splits.train[30]]
    data["train"] = [[it.path, it.label] for it in chosen]
    cache.write_text(json.dumps(data))
    assert few_shot(splits, 2, seed=7, cache_dir=tmp_path).train == chosen
    # ... and is recomputed when the split changed underneath it
    changed = fake_splits(4, per_class=11, name="pets")
    again = few_shot(changed, 2, seed=7, cache_dir=tmp_path)
    assert again.per_class_counts("train") == {0: 2, 1: 2, 2: 2, 3: 2}
    assert again.train == few_shot(changed, 2, seed=7).train


def test_few_shot_then_base_novel_compose():
    splits = fake_splits(37, per_class=8)
    base = subsample(few_shot(splits, 2, seed=1), "base")
    assert base.num_classes == 19 and base.per_class_counts("train") == {k: 2 for k in range(19)}
