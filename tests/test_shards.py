"""Webdataset shards: write -> stream, epochs, workers, ranks, patterns, resume, corrupt members."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from kdpipe.data import Item, build_transform
from kdpipe.data.shards import ShardStream, expand_pattern, inspect_shards, write_shards
from kdpipe.errors import KdpipeError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TEST_T = build_transform(False, 16, MEAN, STD)
TRAIN_T = build_transform(True, 16, MEAN, STD)


def jpeg_bytes(i: int, size=(24, 18)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 37 % 256, i * 91 % 256, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def make_items(folder: Path, n: int, classes: int = 3) -> list[Item]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"img{i:03d}.jpg"
        path.write_bytes(jpeg_bytes(i, (20 + i % 7, 16 + i % 5)))
        items.append(Item(str(path), i % classes, f"class {i % classes}"))
    return items


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    items = make_items(root / "src", 25)
    write_shards(items, root / "out", per_shard=9, max_side=0, classnames=["class 0", "class 1", "class 2"])
    return root / "out", items


def read_pass(stream):
    keys, labels = [], []
    for batch in stream:
        keys += batch[1]
        if len(batch) == 3:
            labels += batch[2].tolist()
    return keys, labels


def test_every_sample_once_per_epoch_with_two_workers_and_order_changes(three_shards):
    out, items = three_shards
    assert len(expand_pattern(out)) == 3
    stream = ShardStream(out, TRAIN_T, seed=3, batch_size=4, workers=2, with_labels=True)
    assert stream.expected_samples() == 25
    orders = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        keys, labels = read_pass(stream)
        assert sorted(keys) == [f"{i:08d}" for i in range(25)]
        assert all(items[int(k)].label == y for k, y in zip(keys, labels))
        assert stream.corrupt == {} and stream.samples_read == 25
        orders.append(keys)
    assert orders[0] != orders[1]
    stream.set_epoch(0)
    assert read_pass(stream)[0] == orders[0]  # same (seed, epoch): same order


def test_order_is_a_function_of_seed_and_epoch_and_a_pass_without_set_epoch_reads_the_next_epoch(three_shards):
    out, _ = three_shards

    def order(seed, epoch):
        return read_pass(ShardStream(out, TEST_T, seed=seed, epoch=epoch, batch_size=5))[0]

    epoch0, epoch1 = order(0, 0), order(0, 1)
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1  # another epoch: another order
    assert order(1, 0) != epoch0  # another seed: another order
    assert order(0, 0) == epoch0  # the same (seed, epoch): the same order
    stream = ShardStream(out, TEST_T, seed=0, epoch=0, batch_size=5)
    assert read_pass(stream)[0] == epoch0
    assert read_pass(stream)[0] == epoch1  # no set_epoch: the second pass is epoch 1, as documented


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core CI machine
def test_more_workers_than_shards_and_node_split(three_shards):
    out, _ = three_shards
    keys, _ = read_pass(ShardStream(out, TEST_T, batch_size=4, workers=5))
    assert sorted(keys) == [f"{i:08d}" for i in range(25)]
    per_rank = [read_pass(ShardStream(out, TEST_T, seed=1, batch_size=4, rank=r, world_size=2))[0] for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == [f"{i:08d}" for i in range(25)]
    with pytest.raises(KdpipeError, match="rank 3 gets no shard"):
        read_pass(ShardStream(out, TEST_T, rank=3, world_size=4))


def test_augmentation_per_key_does_not_depend_on_workers(three_shards):
    out, _ = three_shards

    def by_key(workers):
        stream = ShardStream(out, TRAIN_T, seed=9, epoch=2, batch_size=3, workers=workers)
        return {k: x for images, keys in stream for k, x in zip(keys, images)}

    a, b = by_key(0), by_key(2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unshuffled_stream_keeps_pattern_order(three_shards):
    out, _ = three_shards
    keys, _ = read_pass(ShardStream(out, TEST_T, batch_size=7, shuffle=False))
    assert keys == [f"{i:08d}" for i in range(25)]


def test_patterns_brace_list_glob_folder_and_pipe(three_shards):
    out, _ = three_shards
    names = [str(out / f"shard-{i:06d}.tar") for i in range(3)]
    assert expand_pattern(str(out / "shard-{000000..000002}.tar")) == names
    assert expand_pattern(str(out / "*.tar")) == names
    assert expand_pattern(names[:2]) == names[:2]
    assert expand_pattern(f"{names[0]}::{names[2]}") == [names[0], names[2]]
    assert expand_pattern(out / "manifest.json") == names
    keys, _ = read_pass(ShardStream(f"pipe:cat {names[1]}", TEST_T, shuffle=False))
    assert keys == [f"{i:08d}" for i in range(9, 18)]
    failing = ShardStream([names[0], "pipe:exit 3"], TEST_T, shuffle=False)
    assert len(read_pass(failing)[0]) == 9
    assert "failed with exit status 3" in failing.corrupt_reasons[("pipe:exit 3", "<archive>")]
    with pytest.raises(KdpipeError, match=r"shard-000003.tar and 4 more not found"):
        expand_pattern(str(out / "shard-{000000..000007}.tar"))
    with pytest.raises(KdpipeError, match="matches no file"):
        expand_pattern(str(out / "nothing-*.tar"))


def write_tar(path: Path, samples: list[dict]) -> Path:
    with open(path, "wb") as f:
        w = TarWriter(f)
        for s in samples:
            w.write(s)
        w.close()
    return path


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    good = jpeg_bytes(1)
    a = write_tar(tmp_path / "a.tar", [
        {"__key__": "a0", "jpg": jpeg_bytes(2), "cls": b"0"},
        {"__key__": "bad-jpeg", "jpg": b"\xff\xd8 this is not a jpeg", "cls": b"1"},
        {"__key__": "a1", "jpg": jpeg_bytes(3), "cls": b"1"},
        {"__key__": "cut-jpeg", "jpg": good[: len(good) // 2], "cls": b"0"},
        {"__key__": "empty", "jpg": b"", "cls": b"1"},
        {"__key__": "a2", "jpg": jpeg_bytes(4), "cls": b"2"},
    ])
    b = write_tar(tmp_path / "b.tar", [{"__key__": f"b{i}", "jpg": jpeg_bytes(10 + i), "cls": b"0"} for i in range(4)])
    with tarfile.open(b) as t:
        cut_member = t.getmember("b2.jpg")
    data = b.read_bytes()
    b.write_bytes(data[: cut_member.offset_data + cut_member.size // 2])  # the tar ends inside b2.jpg
    c = write_tar(tmp_path / "c.tar", [{"__key__": f"c{i}", "jpg": jpeg_bytes(20 + i), "cls": b"2"} for i in range(3)])

    stream = ShardStream([str(a), str(b), str(c)], TEST_T, batch_size=2, workers=2, with_labels=True)
    keys, labels = read_pass(stream)
    assert sorted(keys) == ["a0", "a1", "a2", "b0", "b1", "c0", "c1", "c2"]
    assert {k: sorted(v) for k, v in stream.corrupt.items()} == {str(a): ["bad-jpeg", "cut-jpeg", "empty"], str(b): ["b2"]}
    reasons = stream.corrupt_reasons
    assert "undecodable" in reasons[(str(a), "bad-jpeg")] and "truncated" in reasons[(str(a), "cut-jpeg")].lower()
    assert "empty jpg" in reasons[(str(a), "empty")] and "cut short" in reasons[(str(b), "b2")]
    assert len(stream.report_lines()) == 4

    report = inspect_shards([str(a), str(b), str(c)])
    assert report.samples == 8 and {(Path(s).name, k) for s, k, _ in report.corrupt} == {
        ("a.tar", "bad-jpeg"), ("a.tar", "cut-jpeg"), ("a.tar", "empty"), ("b.tar", "b2")}
    assert report.labels == Counter({0: 3, 1: 1, 2: 4})


def test_tar_cut_between_samples_is_noticed_through_the_manifest(tmp_path):
    items = make_items(tmp_path / "src", 6)
    out = tmp_path / "out"
    write_shards(items, out, per_shard=6, max_side=0)
    shard = out / "shard-000000.tar"
    with tarfile.open(shard) as t:
        boundary = t.getmember("00000004.cls").offset  # header of the 5th sample
    shard.write_bytes(shard.read_bytes()[:boundary])
    stream = ShardStream(out, TEST_T, batch_size=4)
    keys, _ = read_pass(stream)
    assert sorted(keys) == [f"{i:08d}" for i in range(4)]
    assert stream.corrupt == {str(shard): ["<missing>"]}
    assert "2 of 6 samples missing" in stream.corrupt_reasons[(str(shard), "<missing>")]


def test_no_readable_sample_is_an_error_not_an_empty_epoch(tmp_path):
    bad = write_tar(tmp_path / "bad.tar", [{"__key__": "x", "jpg": b"garbage"}])
    with pytest.raises(KdpipeError, match="yielded no readable sample.*undecodable"):
        read_pass(ShardStream(str(bad), TEST_T))
    (tmp_path / "zero.tar").write_bytes(b"")
    with pytest.raises(KdpipeError, match="yielded no readable sample"):
        read_pass(ShardStream(str(tmp_path / "zero.tar"), TEST_T, workers=1))
    with pytest.raises(KdpipeError, match="not found"):
        ShardStream(str(tmp_path / "missing-{0..3}.tar"), TEST_T)


def test_shuffled_write_mixes_classes_across_shards_reproducibly(tmp_path):
    items = sorted(make_items(tmp_path / "src", 24, classes=4), key=lambda it: it.label)  # class by class

    def stored_labels(out):
        write_shards(items, out, per_shard=6, max_side=0, shuffle_seed=3)
        stream = ShardStream(str(out), TRAIN_T, shuffle=False, batch_size=6, with_labels=True)
        return [read_pass([batch])[1] for batch in stream]

    first = stored_labels(tmp_path / "a")
    assert first == stored_labels(tmp_path / "b")  # same seed, same order
    assert sorted(sum(first, [])) == sorted(it.label for it in items)
    assert all(len(set(shard)) > 1 for shard in first)  # no shard is a single class any more


def test_write_resizes_keeps_small_jpegs_and_stores_meta(tmp_path):
    big, small, png = tmp_path / "big.png", tmp_path / "small.jpg", tmp_path / "p.png"
    Image.new("RGB", (90, 60), (10, 200, 30)).save(big)
    small.write_bytes(jpeg_bytes(5, (30, 20)))
    Image.new("RGBA", (12, 10), (0, 0, 255, 128)).save(png)
    write_shards([big, small, png], tmp_path / "out", per_shard=10, max_side=24)
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    assert sorted(members) == ["00000000.jpg", "00000000.json", "00000001.jpg", "00000001.json", "00000002.json", "00000002.png"]
    assert Image.open(io.BytesIO(members["00000000.jpg"])).size == (36, 24)  # shorter side 60 -> 24
    assert members["00000001.jpg"] == small.read_bytes()  # small enough: stored as is
    assert members["00000002.png"] == png.read_bytes()
    meta = json.loads(members["00000000.json"])
    assert meta == {"path": str(big), "width": 90, "height": 60}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 3 and manifest["labels"] is False


def test_write_is_resumable_and_refuses_a_different_source(tmp_path, monkeypatch):
    items = make_items(tmp_path / "src", 10)
    bad = tmp_path / "src" / "broken.jpg"
    bad.write_bytes(b"nope")
    items.insert(4, Item(str(bad), 0, "class 0"))
    out = tmp_path / "out"
    manifest_path = write_shards(items, out, per_shard=4, max_side=0)
    manifest = json.loads(manifest_path.read_text())
    assert [s["count"] for s in manifest["shards"]] == [4, 3, 3] and manifest["count"] == 10
    assert manifest["skipped"][0][0] == str(bad)
    assert manifest["class_counts"] == {"0": 4, "1": 3, "2": 3}

    # a run killed after the first shard: only the missing shards are written again
    (out / "shard-000001.tar").unlink()
    (out / "shard-000002.tar").unlink()
    manifest["complete"] = False
    for s in manifest["shards"][1:]:
        del s["count"], s["bytes"]
    manifest_path.write_text(json.dumps(manifest))
    first_mtime = (out / "shard-000000.tar").stat().st_mtime_ns
    import kdpipe.data.shards.write as write_mod

    written = []
    real = write_mod._write_shard
    monkeypatch.setattr(write_mod, "_write_shard", lambda path, samples: written.append(path.name) or real(path, samples))
    write_shards(items, out, per_shard=4, max_side=0)
    assert written == ["shard-000001.tar", "shard-000002.tar"]
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first_mtime
    keys, _ = read_pass(ShardStream(out, TEST_T, batch_size=4))
    assert len(keys) == 10
    written.clear()
    write_shards(items, out, per_shard=4, max_side=0)  # complete: nothing to do
    assert written == []
    (out / "shard-000002.tar").unlink()  # a finished set that lost a shard is repaired
    write_shards(items, out, per_shard=4, max_side=0)
    assert written == ["shard-000002.tar"] and json.loads(manifest_path.read_text())["complete"]

    with pytest.raises(KdpipeError, match="another source or other settings"):
        write_shards(items[:5], out, per_shard=4, max_side=0)
    with pytest.raises(KdpipeError, match="cannot read image .*broken.jpg"):
        write_shards(items, tmp_path / "strict", per_shard=4, strict=True)


def test_a_deliberate_worker_count_does_not_print_torchs_core_warning(tmp_path):
    # distill.workers is fingerprinted (it decides batches), so it may exceed the cores on purpose
    import os
    import warnings

    from kdpipe.data.shards import ShardStream, write_shards
    from kdpipe.data.transforms import build_transform

    paths = []
    for i in range(6):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(p)
        paths.append(str(p))
    write_shards(paths, tmp_path / "s", per_shard=1)
    many = (os.cpu_count() or 1) + 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = ShardStream(str(tmp_path / "s"), build_transform(False, 16, (0.5,) * 3, (0.5,) * 3), batch_size=2, workers=many)
        keys = [k for _, ks in stream for k in ks]
    assert len(keys) == 6
    assert not [w for w in caught if "This DataLoader will create" in str(w.message)]


def test_default_workers_never_exceed_the_cores():
    import os

    from kdpipe.dist import default_workers
    from kdpipe.settings.sections import DataConfig

    assert default_workers() == min(4, os.cpu_count() or 1) == DataConfig().workers


def test_a_clobbered_header_is_corrupt_even_without_a_manifest(tmp_path):
    # tarfile stops quietly at an unreadable header, as at a real end: it must not read as a short, healthy shard
    from kdpipe.data.shards.tarread import iter_samples

    shard = write_tar(tmp_path / "s.tar", [{"__key__": f"s{i}", "jpg": jpeg_bytes(30 + i), "cls": b"0"} for i in range(5)])
    with tarfile.open(shard) as t:
        header = t.getmember("s2.cls").offset
    data = bytearray(shard.read_bytes())
    data[header:header + 512] = b"\x7f" * 512
    shard.write_bytes(bytes(data))

    problems = []
    keys = [s["__key__"] for s in iter_samples(str(shard), lambda *p: problems.append(p))]
    assert keys == ["s0", "s1"] and len(problems) == 1
    assert problems[0][1] == "<archive>" and "unreadable tar header" in problems[0][2]
    stream = ShardStream([str(shard)], TEST_T, batch_size=2, workers=0)
    read_pass(stream)
    assert stream.corrupt == {str(shard): ["<archive>"]}

    intact = write_tar(tmp_path / "ok.tar", [{"__key__": "k", "jpg": jpeg_bytes(1)}])
    problems.clear()
    assert [s["__key__"] for s in iter_samples(str(intact), lambda *p: problems.append(p))] == ["k"] and problems == []


def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path):
    import json

    from kdpipe.data.shards import expand_pattern

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_tar(elsewhere / "outside.tar", [{"__key__": "x", "jpg": jpeg_bytes(1)}])
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "kdpipe-shards/1", "shards": [{"name": "../../elsewhere/outside.tar", "count": 1}]}))
    with pytest.raises(KdpipeError, match="outside its folder"):
        expand_pattern(str(folder))
    (folder / "manifest.json").write_text(json.dumps({"format": "kdpipe-shards/1", "shards": [{"name": "link.tar", "count": 1}]}))
    (folder / "link.tar").symlink_to(elsewhere / "outside.tar")
    with pytest.raises(KdpipeError, match="outside its folder"):
        expand_pattern(str(folder))
