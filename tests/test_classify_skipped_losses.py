"""classify's ``OUT.skipped.jsonl`` lists every loss once: the placeholder keys of a damaged archive
(``<missing>``, ``<archive>``) are per shard, so losses in several shards never merge into one."""

import json
import tarfile

import pytest

from kdpipe.data.shards import write_shards
from kdpipe.infer.classify import classify
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import skipped_path
from test_classify import CLASSES, TinyEncoder, class_index, keys_of, write_images  # noqa: F401  (fixture)


def cut_before_sample(shard, key: str) -> None:
    """End the tar just before sample ``key`` (a clean cut: only the manifest's count tells)."""
    with tarfile.open(shard) as t:
        boundary = min(m.offset for m in t.getmembers() if m.name.startswith(key + "."))
    shard.write_bytes(shard.read_bytes()[:boundary])


def clobber_header_of(shard, key: str) -> None:
    with tarfile.open(shard) as t:
        header = min(m.offset for m in t.getmembers() if m.name.startswith(key + "."))
    data = bytearray(shard.read_bytes())
    data[header:header + 512] = b"\x7f" * 512
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 2])
def test_losses_in_several_shards_are_each_listed_once(tmp_path, tiny_student, class_index, workers):
    paths = write_images(tmp_path / "imgs", 12, sub=False)
    folder = tmp_path / "shards"
    write_shards([str(p) for p in paths], folder, per_shard=4, max_side=0)  # keys 0..11, 4 per shard, with a manifest
    shards = sorted(folder.glob("shard-*.tar"))
    assert len(shards) == 3
    cut_before_sample(shards[0], "00000002")  # 2 of 4 missing
    cut_before_sample(shards[1], "00000007")  # 1 of 4 missing
    clobber_header_of(shards[2], "00000010")  # unreadable header: <archive>, and 2 of 4 missing

    out = tmp_path / "out.jsonl"
    for _ in range(2):  # the second run resumes: nothing is listed again
        classify(TinyEncoder(tiny_student), class_index, CLASSES, open_source(str(folder)), out,
                 batch_size=3, workers=workers, device="cpu", progress=False)
        skipped = [json.loads(ln) for ln in skipped_path(out).read_text().splitlines()]
        keys = [r["key"] for r in skipped]
        assert sorted(keys) == sorted([f"{shards[0]}#<missing>", f"{shards[1]}#<missing>",
                                       f"{shards[2]}#<missing>", f"{shards[2]}#<archive>"]), keys
        reasons = {r["key"]: r["reason"] for r in skipped}
        assert "2 of 4 samples missing" in reasons[f"{shards[0]}#<missing>"]
        assert "1 of 4 samples missing" in reasons[f"{shards[1]}#<missing>"]
        assert "unreadable tar header" in reasons[f"{shards[2]}#<archive>"]
        assert len(keys_of(out)) == 2 + 3 + 2
