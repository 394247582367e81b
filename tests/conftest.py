"""Test-wide setup: offline, CPU, tiny models.

HF_HUB_OFFLINE must be set before open_clip (and huggingface_hub) are imported.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


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
