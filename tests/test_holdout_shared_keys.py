"""User shard sets made from different folders share member keys (every ``kdpipe shards write`` set
starts at ``00000000``): the held-out slice is recorded by shard and key, so distill's training
stream drops exactly the held-out images, not their namesakes in other shards."""

from __future__ import annotations

from collections import Counter

from test_pipeline_fakedata import make_fake_pets
from test_pipeline_shards import _cfg, _run_shards


def test_holdout_drops_only_the_held_out_images_when_shards_share_keys(tmp_path):
    from kdpipe.data import load_dataset
    from kdpipe.data.shards import ShardStream, write_shards
    from kdpipe.data.transforms import build_transform
    from kdpipe.distill.batches import filtered_batches, holdout_exclusion
    from kdpipe.artefacts.shards_info import read_shards_info

    make_fake_pets(tmp_path / "data")
    items = load_dataset("oxford_pets", tmp_path / "data").train
    half = len(items) // 2
    write_shards(items[:half], tmp_path / "mine" / "a", per_shard=8, keep_labels=False, max_side=0)
    write_shards(items[half:], tmp_path / "mine" / "b", per_shard=8, keep_labels=False, max_side=0)
    pattern = f"{tmp_path / 'mine'}/{{a,b}}"
    result = _run_shards(tmp_path, f"shards.unlabeled={pattern}", "shards.holdout=3")
    assert result.exit_code == 0, result.output

    info = read_shards_info(tmp_path / "run" / "shards", _cfg(f"shards.unlabeled={pattern}"))
    tf = build_transform(False, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    stream = ShardStream(info["train"], tf, seed=1, batch_size=len(items), with_urls=True, shuffle=False)
    kept = Counter(k for batch in filtered_batches(stream, holdout_exclusion(info)) for k in batch[1])
    assert sum(kept.values()) == len(items) - 3
    held = info["holdout_members"]
    assert len(held) == 3 and {url for url, _ in held} == {str(tmp_path / "mine" / "a" / "shard-000000.tar")}
    assert all(kept[key] == 1 for _, key in held)  # its namesake in b trains, the held-out one does not
    # a shards.json from before the members were recorded still drops the held-out keys (and their namesakes)
    legacy = {k: v for k, v in info.items() if k != "holdout_members"}
    stream = ShardStream(info["train"], tf, seed=1, batch_size=len(items), with_urls=True, shuffle=False)
    assert len([k for batch in filtered_batches(stream, holdout_exclusion(legacy)) for k in batch[1]]) == len(items) - 6
