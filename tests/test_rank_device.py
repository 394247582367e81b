"""Under torchrun every rank gets its own GPU: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.

The mapping is tested here on the CPU; ``tests/test_gpu.py`` runs it on two real GPUs."""

from __future__ import annotations

import pytest
import torch

from kdpipe.dist import rank_device
from kdpipe.errors import KdpipeError

CUDA = torch.device("cuda")


@pytest.mark.parametrize("env, gpus, expected", [
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, 2, "cuda:1"),  # two nodes of two GPUs: rank 3 is node 2's second
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, 8, "cuda:1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, 8, "cuda:0"),
    ({"WORLD_SIZE": "4", "RANK": "3"}, 2, "cuda:1"),  # no LOCAL_RANK (a launcher other than torchrun): rank mod GPUs
    ({}, 8, "cuda"),  # one process: the default GPU, as before
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, 8, "cuda"),
])
def test_a_bare_cuda_device_becomes_the_ranks_own_gpu(env, gpus, expected):
    assert rank_device(CUDA, env, gpus) == torch.device(expected)


@pytest.mark.parametrize("device", ["cuda:3", "cpu"])
def test_an_explicit_device_is_kept(device):
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert rank_device(torch.device(device), env, 8) == torch.device(device)


def test_more_ranks_on_a_node_than_gpus_is_one_line():
    with pytest.raises(KdpipeError, match=r"local rank 2 has no GPU of its own: 2 visible.*--nproc_per_node 2"):
        rank_device(CUDA, {"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "2"}, 2)
