"""The shards stage with a user's own unlabeled shards: a held-out slice copied out, its keys
dropped from the training stream, and bad patterns refused in one line."""

from __future__ import annotations

import json

import torch

from test_pipeline_fakedata import make_fake_pets


def _run_shards(tmp_path, *sets):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    args = ["run", "shards", "--run-dir", str(tmp_path / "run"), "--dataset", "oxford_pets", "--data-root", str(tmp_path / "data")]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def test_user_shards_hold_out_a_slice_and_distill_drops_its_keys(tmp_path):
    from kdpipe.data import load_dataset
    from kdpipe.data.shards import ShardStream, write_shards
    from kdpipe.data.transforms import build_transform
    from kdpipe.distill.batches import filtered_batches
    from kdpipe.artefacts.shards_info import read_shards_info

    make_fake_pets(tmp_path / "data")
    items = load_dataset("oxford_pets", tmp_path / "data").train
    write_shards(items, tmp_path / "mine", per_shard=20, keep_labels=False)
    result = _run_shards(tmp_path, f"shards.unlabeled={tmp_path / 'mine'}", "shards.holdout=5",
                         "shards.holdout_fraction=0.1")  # 10% of 72 does not cap the 5
    assert result.exit_code == 0, result.output

    info = read_shards_info(tmp_path / "run" / "shards", _cfg(f"shards.unlabeled={tmp_path / 'mine'}"))
    assert info["train"] == str(tmp_path / "mine") and info["filter_holdout"] and not info["transductive"]
    assert len(info["holdout_keys"]) == 5
    tf = build_transform(False, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    held = [k for _, keys in ShardStream(info["holdout"], tf, batch_size=4) for k in keys]
    assert sorted(held) == sorted(info["holdout_keys"])

    stream = ShardStream(info["train"], tf, seed=1, batch_size=8)
    kept = [k for _, keys in filtered_batches(stream, frozenset(info["holdout_keys"])) for k in keys]
    assert not set(kept) & set(held)
    assert len(kept) >= len(items) - 5 - 8  # at most a too-small batch is dropped besides the slice


def _cfg(*sets):
    from kdpipe.config import settings_from_cli
    from kdpipe.pipeline import GRAPH
    from kdpipe.stage_graph import stage_graph

    stage_graph()
    return settings_from_cli(None, sets, schema=GRAPH.schema).config


def test_shard_locations_come_from_the_settings_never_from_the_stage_file(tmp_path):
    # a run dir from someone else: its shards.json names a command where the shards should be
    from kdpipe.io import write_json
    from kdpipe.artefacts.shards_info import INFO, read_shards_info

    folder = tmp_path / "shards"
    (folder / "holdout").mkdir(parents=True)
    write_json(folder / INFO, {"train": f"pipe:touch {tmp_path / 'ran'}", "holdout": "pipe:false", "holdout_keys": [],
                               "filter_holdout": False, "transductive": True, "images": 3})
    info = read_shards_info(folder, _cfg())
    assert info["train"] == str(folder / "unlabeled") and info["holdout"] == str(folder / "holdout")
    assert read_shards_info(folder, _cfg("shards.unlabeled=/data/mine/{000..009}.tar"))["train"] == "/data/mine/{000..009}.tar"


def test_filtered_batches_drop_batches_batchnorm_cannot_train_on():
    from kdpipe.distill.batches import filtered_batches

    batches = [(torch.zeros(3, 3, 4, 4), ["a", "b", "c"]), (torch.zeros(2, 3, 4, 4), ["d", "e"])]
    out = list(filtered_batches(batches, frozenset({"a", "b", "d"})))
    assert [keys for _, keys in out] == []
    out = list(filtered_batches(batches, frozenset({"a"})))
    assert [keys for _, keys in out] == [["b", "c"], ["d", "e"]] and out[0][0].shape[0] == 2


def test_missing_user_shards_are_refused_in_one_line(tmp_path):
    from kdpipe.errors import KdpipeError

    make_fake_pets(tmp_path / "data")
    result = _run_shards(tmp_path, f"shards.unlabeled={tmp_path / 'nowhere' / 'shard-{000000..000003}.tar'}")
    assert isinstance(result.exception, KdpipeError)
    assert "not found" in str(result.exception) and "\n" not in str(result.exception)


def test_built_shards_record_the_transductive_setting(tmp_path):
    make_fake_pets(tmp_path / "data")
    result = _run_shards(tmp_path, "shards.holdout=4", "shards.per_shard=30")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "shards" / "shards.json").read_text())
    assert info["transductive"] and info["images"] == 6 * 12 - 3  # 4 capped at 5% of 72 = 3
    assert "all 6 classes" in info["source"] and "labels dropped" in info["source"]
    manifest = json.loads((tmp_path / "run" / "shards" / "unlabeled" / "manifest.json").read_text())
    assert not manifest["labels"]
