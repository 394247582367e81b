"""A tiny unlabeled set: the shards stage holds out at most ``shards.holdout_fraction`` of it, and
refuses (with the numbers and the settings to change) when nothing would be left to distil on,
instead of distill failing later with "epoch 1 produced no batches"."""

from __future__ import annotations

import json

from kdpipe.errors import KdpipeError
from test_pipeline_fakedata import make_fake_pets
from test_pipeline_shards import _run_shards


def _tiny_user_shards(tmp_path, n: int):
    from kdpipe.data import load_dataset
    from kdpipe.data.shards import write_shards

    make_fake_pets(tmp_path / "data")
    items = load_dataset("oxford_pets", tmp_path / "data").train[:n]
    write_shards(items, tmp_path / "mine", per_shard=10, keep_labels=False)
    return f"shards.unlabeled={tmp_path / 'mine'}"


def test_user_shards_hold_out_at_most_the_fraction_of_a_small_set(tmp_path):
    mine = _tiny_user_shards(tmp_path, 23)
    result = _run_shards(tmp_path, mine, "shards.holdout_fraction=0.1")  # shards.holdout stays 256
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "shards" / "shards.json").read_text())
    assert len(info["holdout_keys"]) == 2  # 10% of 23, not all 23 of them


def test_user_shards_all_held_out_are_refused_with_the_numbers(tmp_path):
    mine = _tiny_user_shards(tmp_path, 23)
    result = _run_shards(tmp_path, mine, "shards.holdout_fraction=1")
    assert isinstance(result.exception, KdpipeError), result.output
    text = str(result.exception)
    assert "\n" not in text
    for part in ("23 readable images", "23 held out", "leaving 0", "at least 2", "shards.holdout", "shards.holdout_fraction"):
        assert part in text, text
    assert not (tmp_path / "run" / "shards" / "shards.json").exists()


def test_user_shards_are_counted_by_their_images_not_their_samples(tmp_path):
    """Samples without an image (captions, labels alone) are skipped by distill: a set of one image
    and twenty captions leaves one image to distil on, and is refused here, in one line."""
    import webdataset as wds

    from kdpipe.data import load_dataset

    make_fake_pets(tmp_path / "data")
    image = load_dataset("oxford_pets", tmp_path / "data").train[0].path
    (tmp_path / "mine").mkdir()
    with wds.TarWriter(str(tmp_path / "mine" / "mixed-000000.tar")) as sink:
        sink.write({"__key__": "photo0000", "jpg": open(image, "rb").read()})
        for i in range(20):
            sink.write({"__key__": f"caption{i:04d}", "txt": b"a photo of a pet"})
    result = _run_shards(tmp_path, f"shards.unlabeled={tmp_path / 'mine' / 'mixed-000000.tar'}")
    assert isinstance(result.exception, KdpipeError), result.output
    text = str(result.exception)
    assert "\n" not in text
    for part in ("holds 1 readable images", "leaving 1", "at least 2"):
        assert part in text, text
    assert not (tmp_path / "run" / "shards" / "shards.json").exists()


def test_built_shards_all_held_out_are_refused_with_the_numbers(tmp_path):
    make_fake_pets(tmp_path / "data")
    result = _run_shards(tmp_path, "shards.holdout_fraction=1", "shards.holdout=100")
    assert isinstance(result.exception, KdpipeError), result.output
    text = str(result.exception)
    for part in ("holds 72 images", "72 held out", "leaving 0", "at least 2", "shards.holdout", "shards.holdout_fraction"):
        assert part in text, text
