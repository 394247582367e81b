"""A distillation on a shard set with a damaged member says so in its results: the distill
manifest's metrics carry the count of skipped members, not only the log."""

from __future__ import annotations

import tarfile

from test_pipeline_fakedata import make_fake_pets


def spoil_image_of(shard, key: str) -> None:
    """Overwrite the image bytes of sample ``key`` in place: the archive stays whole, the jpg does not decode."""
    with tarfile.open(shard) as t:
        member = next(m for m in t.getmembers() if m.name.startswith(key + ".") and not m.name.endswith((".cls", ".json")))
    data = bytearray(shard.read_bytes())
    data[member.offset_data:member.offset_data + member.size] = b"\0" * member.size
    shard.write_bytes(bytes(data))


def test_distill_manifest_counts_the_damaged_members_it_skipped(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app
    from kdpipe.data import load_dataset
    from kdpipe.data.shards import write_shards
    from kdpipe.pipeline.manifest import read_manifest

    data = make_fake_pets(tmp_path / "data")
    items = load_dataset("oxford_pets", data).train
    mine = tmp_path / "mine"
    write_shards(items, mine, per_shard=16, keep_labels=False, max_side=0)
    shards = sorted(mine.glob("shard-*.tar"))
    spoil_image_of(shards[-1], sorted(m.name for m in tarfile.open(shards[-1]).getmembers())[-1].split(".")[0])

    args = ["run", "distill", "--with-deps", "--run-dir", str(tmp_path / "run"), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
            "--dataset", "oxford_pets", "--data-root", str(data), "--seeds", "1"]
    for s in (f"shards.unlabeled={mine}", "shards.holdout=4", "data.shots=2", "data.workers=0", "teacher.promptsrc.epochs=1",
              "distill.epochs=1", "distill.workers=0", "distill.lr=0.001", "distill.allow_weak_teacher=true"):
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifests = [read_manifest(p) for p in (tmp_path / "run").glob("distill*") if p.is_dir()]
    assert manifests and all(m is not None for m in manifests), list((tmp_path / "run").iterdir())
    assert [m["metrics"]["corrupt_members"] for m in manifests] == [1]
