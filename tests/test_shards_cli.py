"""`kdpipe shards write` / `kdpipe shards inspect` and `kdpipe datasets` from the command line."""

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.errors import KdpipeError

runner = CliRunner()


def image(path: Path, color=(0, 90, 200), size=(30, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_write_plain_folder_then_inspect(tmp_path):
    for i in range(5):
        image(tmp_path / "src" / ("sub" if i % 2 else "") / f"{i}.jpg", (i * 40, 10, 10))
    (tmp_path / "src" / "notes.txt").write_text("not an image")
    result = runner.invoke(app, ["shards", "write", str(tmp_path / "src"), str(tmp_path / "out"), "--per-shard", "2", "--max-side", "10"])
    assert result.exit_code == 0, result.output
    assert "5 images in 3 shards" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["labels"] is False and manifest["count"] == 5

    result = runner.invoke(app, ["shards", "inspect", str(tmp_path / "out" / "shard-{000000..000002}.tar")])
    assert result.exit_code == 0, result.output
    assert "total: 5 readable samples" in result.output and "no labels" in result.output and "0 corrupt" in result.output


def test_write_dataset_base_classes_and_inspect_lists_corrupt_members(tmp_path):
    base = tmp_path / "oxford_pets"
    rows = []
    for label, cname in enumerate(["abyssinian", "beagle", "boxer"]):
        for i in range(2):
            rel = f"{cname}_{i}.jpg"
            image(base / "images" / rel, (label * 80, i * 100, 50))
            rows.append([rel, label, cname])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps({"train": rows, "val": [], "test": []}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["shards", "write", str(tmp_path), str(out), "--dataset", "oxford_pets", "--subset", "base"])
    assert result.exit_code == 0, result.output
    assert "4 images in 1 shards" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classnames"] == ["abyssinian", "beagle"] and manifest["class_counts"] == {"0": 2, "1": 2}

    shard = out / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    start = data.index(b"\xff\xd8")  # first JPEG payload: overwrite its header
    data[start : start + 64] = b"\0" * 64
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["shards", "inspect", str(out)])
    assert result.exit_code == 1, result.output  # damage found: a script sees it
    assert "total: 3 readable samples" in result.output and "2 classes" in result.output
    assert "corrupt: " in result.output and "[00000000]: undecodable image" in result.output


def test_write_missing_source_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["shards", "write", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert isinstance(result.exception, KdpipeError) and "neither a folder of images" in str(result.exception)


def test_datasets_command_lists_names_and_layouts():
    result = runner.invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("oxford_pets", "imagenet_sketch", "imagefolder", "world", "split_zhou_OxfordPets.json"):
        assert name in result.output
