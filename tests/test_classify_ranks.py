"""classify under a real ``torchrun`` (two CPU ranks, gloo): one rank killed mid-run, then the job re-run."""

import os
import re
import subprocess
import sys
import textwrap
from collections import Counter

from kdpipe.data.shards import expand_pattern
from kdpipe.data.shards.tarread import iter_samples
from kdpipe.infer.shard_source import sample_key
from kdpipe.infer.writers import read_rows, skipped_path
from test_classify import class_index, write_two_shard_sets  # noqa: F401  (class_index: the fixture)

SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_classify import TinyEncoder, CLASSES
from kdpipe.clip import load_backbone
from kdpipe.infer.classify import classify
from kdpipe.infer.index import ClassIndex
from kdpipe.infer.sources import open_source

KILL = sys.argv[1:] == ["kill"] and os.environ["RANK"] == "1"

class Encoder(TinyEncoder):
    def __call__(self, images):
        if KILL and self.calls == 2:  # two batches of this rank are in its part file
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(images)

torch.manual_seed(0)
s = classify(Encoder(load_backbone("kd-tiny-s")), ClassIndex.load({index!r}), CLASSES, open_source({spec!r}), {out!r},
             batch_size=2, workers=0, device="cpu", progress=False)
# a file, not stdout: torchrun's handling of its workers' output is not ours to rely on
with open({out!r} + ".summary-rank" + os.environ["RANK"], "w") as f:
    f.write(f"rows_new {{s.rows_new}} resumed {{s.resumed}}")
"""


def torchrun(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *args], env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_rank_killed_then_rerun_writes_every_image_once(tmp_path, class_index):  # noqa: F811
    write_two_shard_sets(tmp_path, sizes=(8, 8), per_shard=2)  # 8 shards, keys 00000000.. in both sets
    spec = str(tmp_path / "{a,b}")
    images = {sample_key(url, s["__key__"]) for url in expand_pattern(spec) for s in iter_samples(url, print)}
    assert len(images) == 16
    class_index.save(tmp_path / "classes.faiss")
    out = tmp_path / "out.jsonl"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=os.path.dirname(__file__), index=str(tmp_path / "classes.faiss"),
                                                    spec=spec, out=str(out))))

    killed = torchrun(script, "kill")
    assert killed.returncode != 0, killed.stderr[-3000:]
    part = tmp_path / "out.jsonl.ranks" / "rank-1.jsonl"
    assert len(read_rows(part)) == 4  # what the killed rank finished survives it

    again = torchrun(script)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = (tmp_path / "out.jsonl.summary-rank0").read_text()
    rows_new, resumed = map(int, re.fullmatch(r"rows_new (\d+) resumed (\d+)", summary).groups())
    assert resumed >= 4 and rows_new + resumed == 16  # nothing done before the kill is redone
    keys = Counter(r["key"] for r in read_rows(out))
    assert set(keys) == images and set(keys.values()) == {1}  # each image exactly once
    assert not (tmp_path / "out.jsonl.ranks").exists() and not skipped_path(out).exists()
