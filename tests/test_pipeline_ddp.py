"""`kdpipe run all` under torchrun with two CPU processes: shards split between ranks, gradients
averaged by the loop, ranks kept in step when their shard shares differ, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_pipeline_fakedata import make_fake_pets

LAUNCH = "import sys\nfrom kdpipe.cli import main\nsys.argv = ['kdpipe'] + sys.argv[1:]\nmain()\n"


def test_run_all_under_torchrun_with_two_processes(tmp_path):
    root = make_fake_pets(tmp_path / "data")
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    sets = {"data.shots": 4, "data.workers": 0, "teacher.promptsrc.epochs": 1, "baselines.methods": "zeroshot",
            "distill.epochs": 3, "distill.lr": 0.001, "distill.workers": 0, "distill.allow_weak_teacher": True,
            # 58 images in shards of 20, 20, 18: one rank streams two shards (5 batches of <= 8),
            # the other one shard (3 batches); unsynchronised, the first would wait forever
            "shards.per_shard": 20, "shards.holdout_fraction": 0.2}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "run", "all", "--run-dir", str(tmp_path / "run"), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
           "--dataset", "oxford_pets", "--data-root", str(root)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(Path.cwd()))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run = tmp_path / "run"
    manifest = json.loads((run / "distill-seed1" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    history = json.loads((run / "distill-seed1" / "curves.json").read_text())["history"]
    # every epoch stops with the shorter rank: 18 or 20 images in batches of 8 -> 3 steps
    assert [h["steps"] for h in history] == [3, 3, 3]
    rows = json.loads((run / "report" / "metrics.json").read_text())["rows"]
    assert {r["role"] for r in rows} == {"teacher", "student", "baseline"}
