"""Two ``classify`` runs on one ``--out``: the second is refused in one line and writes nothing."""

import subprocess
import sys

import pytest

from kdpipe.errors import KdpipeError
from test_classify import TinyEncoder, write_images


def test_a_second_classify_on_the_same_out_is_refused(tmp_path, tiny_student):
    from kdpipe.infer.classify import classify
    from kdpipe.infer.index import ClassIndex
    from kdpipe.infer.sources import open_source

    import torch

    write_images(tmp_path / "imgs", 6)
    out = tmp_path / "preds.jsonl"
    enc = TinyEncoder(tiny_student)
    index = ClassIndex.build(torch.nn.functional.normalize(torch.randn(3, 24), dim=-1), "flat")
    script = (f"from kdpipe.pipeline.lock import OutputLock; import time; OutputLock({str(out)!r}).__enter__(); "
              "print('held', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(KdpipeError, match=f"being written by another kdpipe classify \\(pid {other.pid}\\)") as e:
            classify(enc, index, ["a", "b", "c"], open_source(tmp_path / "imgs"), out, top_k=2, batch_size=4,
                     workers=0, device="cpu", progress=False)
        assert "\n" not in str(e.value) and not out.exists() and enc.calls == 0
    finally:
        other.kill()
        other.wait()
    summary = classify(enc, index, ["a", "b", "c"], open_source(tmp_path / "imgs"), out, top_k=2, batch_size=4,
                       workers=0, device="cpu", progress=False)
    assert summary.rows_total == 6
