"""Ray Data: the README's example runs as written on a local Ray instance, gives classify's rows,
every image exactly once, also when an actor is killed mid-job."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import export_bundle, load_bundle
from kdpipe.infer.classify import classify
from kdpipe.infer.precision import resolve
from kdpipe.infer.ray_data import BundleClassifier
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import read_rows
from test_classify import write_images
from test_classify_bundle import make_model
from test_classify_outputs import write_shards

README = Path(__file__).resolve().parent.parent / "README.md"
IMAGES = 11


@pytest.fixture(scope="module")
def local_ray():
    # one instance for the module (it takes seconds to start). CPUs and GPUs are logical resources:
    # 4 CPUs let the 2 actors (one CPU each) run beside a read and a write task (with 2, the read
    # task never got one); the GPUs only make Ray set CUDA_VISIBLE_DEVICES, torch sees none and
    # the actors run on the CPU, so the README's num_gpus=1 runs here unchanged
    ray.init(num_cpus=4, num_gpus=2, object_store_memory=80 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_student, tiny_teacher):
    """A folder as the README expects it: the bundle ``pets-student`` and ``shards/unlabeled``
    (11 images in 4 shards, one of them undecodable)."""
    root = tmp_path_factory.mktemp("ray")
    export_bundle(make_model(tiny_student, tiny_teacher), root / "pets-student")
    paths = write_images(root / "imgs", IMAGES, sub=False)
    paths[4].write_bytes(b"\xff\xd8 not a jpeg")  # an unreadable image is a row with its reason
    (root / "shards").mkdir()
    write_shards(root / "shards" / "unlabeled", paths)
    return root


def readme_ray_example() -> str:
    section = README.read_text().split("#### At scale with Ray Data", 1)[1]
    section = re.split(r"\n#{2,4} ", section, maxsplit=1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected one python example in the Ray Data section"
    return blocks[0]


def keys_of(table) -> list[str]:
    return table.column("key").to_pylist()


def test_readme_example_gives_classify_rows_each_image_once(local_ray, world, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(world, run_dir)
    monkeypatch.chdir(run_dir)
    exec(compile(readme_ray_example(), "README.md", "exec"), {})
    table = pq.read_table(run_dir / "preds-ray")
    keys = keys_of(table)
    assert len(keys) == IMAGES == len(set(keys))
    assert table.column_names == ["key", "labels", "scores", "probs", "ids", "error"]

    # the same shards through kdpipe classify: the same keys, types and numbers
    expected = run_dir / "classify.parquet"
    model = load_bundle(run_dir / "pets-student", precision="auto")  # what both default to: the bundle's (auto)
    classify(model.encoder(), model.index(), model.classnames, open_source(str(run_dir / "shards" / "unlabeled")), expected,
             top_k=5, batch_size=4, workers=0, device="cpu", progress=False, logit_scale=model.logit_scale)
    mine = {r["key"]: r for r in table.to_pylist()}
    theirs = {r["key"]: r for r in read_rows(expected)}
    bad = [k for k, r in mine.items() if r["error"] is not None]
    assert len(bad) == 1 and bad[0].endswith("#k004") and "undecodable image" in mine[bad[0]]["error"]
    assert mine[bad[0]]["labels"] == []
    assert set(theirs) == set(mine) - set(bad)
    for key, row in theirs.items():
        assert (mine[key]["labels"], mine[key]["ids"]) == (row["labels"], row["ids"])
        # bf16 matmuls round a little differently per batch size (Ray's batches are not classify's)
        for c in ("scores", "probs"):
            assert mine[key][c] == pytest.approx(row[c], abs=1e-4)
    assert pq.read_schema(expected).remove_metadata().equals(
        pq.read_schema(next((run_dir / "preds-ray").glob("*.parquet"))).remove(5).remove_metadata())


def test_killed_actor_loses_and_repeats_no_image(local_ray, world, tmp_path):
    marker = tmp_path / "killed"

    class DiesOnce(BundleClassifier):
        """The first batch any actor gets kills that actor's process (once for the whole job)."""

        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    ds = ray.data.read_webdataset(str(world / "shards" / "unlabeled"), decoder=None)
    ds.map_batches(DiesOnce, fn_constructor_kwargs={"bundle": str(world / "pets-student"), "top_k": 2}, batch_size=3,
                   compute=ray.data.ActorPoolStrategy(size=2)).write_parquet(str(tmp_path / "out"))
    assert marker.exists()  # an actor did die mid-job
    keys = keys_of(pq.read_table(tmp_path / "out"))
    assert len(keys) == IMAGES == len(set(keys))
    assert {k.rsplit("#", 1)[1] for k in keys} == {f"k{i:03d}" for i in range(IMAGES)}


def test_decoded_rows_and_other_inputs_are_refused_in_one_line(world):
    clf = BundleClassifier(world / "pets-student", top_k=2)
    with pytest.raises(KdpipeError, match="rows of ray.data.read_webdataset"):
        clf({"image": [b"x"]})
    import numpy as np

    with pytest.raises(KdpipeError, match="pass decoder=None"):
        clf({"__key__": ["a"], "__url__": ["s.tar"], "jpg": [np.zeros((4, 4, 3), np.uint8)]})


def test_actors_run_the_bundles_precision_or_the_one_asked(world):
    assert BundleClassifier(world / "pets-student").model.precision == resolve("auto", "cpu")  # the bundle's default: auto
    assert BundleClassifier(world / "pets-student", precision="int8").model.precision == "int8"
    with pytest.raises(KdpipeError, match="unknown precision"):
        BundleClassifier(world / "pets-student", precision="fp8")
