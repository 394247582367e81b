"""Test-wide setup: offline, CPU, tiny models.

HF_HUB_OFFLINE must be set before open_clip (and huggingface_hub) are imported.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process: the tests run tiny models, often beside DataLoader workers, subprocesses
# or a second xdist worker, and OpenMP spin-waiting with 2 busy processes on 2 cores slowed small
# ops up to ~25x (test_train.py: 325 s with the default threads vs 33 s with one, measured here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile of a tiny model costs more than the tests' whole run on it; the compiled path's
# logic is tested on its own (test_precision_compile.py), the real compile by the gpu tests.
os.environ.setdefault("KDPIPE_COMPILE", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_student():
    from kdpipe.clip import load_backbone

    return load_backbone("kd-tiny-s")


@pytest.fixture(scope="session")
def tiny_teacher():
    from kdpipe.clip import load_backbone

    return load_backbone("kd-tiny-t")
