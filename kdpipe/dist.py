"""The few things kdpipe needs from torch.distributed, in one place.

Under ``torchrun`` every process runs the same code; rank 0 decides and writes, the others follow.
Decisions travel as JSON bytes in a CPU tensor (``Ranks.share``): nothing is ever unpickled from
another process.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

from kdpipe.errors import KdpipeError


def rank_world() -> tuple[int, int]:
    """(rank, world size): the process group's when one is up, else torchrun's environment, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: "torch.device", env: Mapping[str, str], gpus: int) -> "torch.device":
    """The GPU a torchrun rank uses for ``device``: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (the
    rank's place on its node; ``RANK mod gpus`` without it) when several processes run, so every
    rank does not land on GPU 0. An explicit ``cuda:N``, a CPU and a single process are kept."""
    import torch

    if device.type != "cuda" or device.index is not None or int(env.get("WORLD_SIZE", "1")) <= 1:
        return device
    local = int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else int(env.get("RANK", "0")) % max(1, gpus)
    if gpus and local >= gpus:
        raise KdpipeError(f"local rank {local} has no GPU of its own: {gpus} visible on this node; "
                          f"start at most {gpus} processes per node (torchrun --nproc_per_node {gpus})")
    return torch.device("cuda", local)


def worker_init(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker, and no life after its parent.

    With several busy processes on few cores, OpenMP threads spin-waiting against each other made
    small tensor ops an order of magnitude slower.
    """
    import torch

    from kdpipe.lifetime import die_with_parent

    die_with_parent()
    torch.set_num_threads(1)


def default_workers(most: int = 4) -> int:
    """DataLoader workers for this machine: up to ``most``, never more than its cores (torch warns
    about more, and on a small machine they only wait for each other)."""
    return max(1, min(most, os.cpu_count() or 1))


class Ranks:
    """This process's place under torchrun, and the default process group for tiny messages.

    The group is made on first use when torchrun started us without one (and torn down by
    :meth:`close`: a process that exits with a live gloo group aborts). In a plain process every
    call is a no-op that returns its input.
    """

    def __init__(self) -> None:
        self.rank, self.world = rank_world()
        self.leader = self.rank == 0
        self.created_group = False

    def _group(self) -> None:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            if torch.cuda.is_available():  # NCCL binds a rank to the current GPU: this rank's own
                torch.cuda.set_device(rank_device(torch.device("cuda"), os.environ, torch.cuda.device_count()))
            # cpu:gloo carries these small messages; cuda:nccl is there for the stages' own DDP
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            self.created_group = True

    def share(self, obj: Any) -> Any:
        """Rank 0's JSON-able ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch
        import torch.distributed as dist

        self._group()
        data = json.dumps(obj).encode() if self.leader else b""
        size = torch.tensor([len(data)], dtype=torch.long)
        dist.broadcast(size, src=0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.leader and data else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, src=0)
        return json.loads(bytes(buf.tolist()).decode())

    def any_failed(self, failed: bool) -> bool:
        """Whether any rank failed, known to every rank, so none waits forever for a dead peer's work."""
        if self.world == 1:
            return failed
        import torch
        import torch.distributed as dist

        self._group()
        flag = torch.tensor([1 if failed else 0], dtype=torch.long)
        dist.all_reduce(flag)
        return int(flag) > 0

    def close(self) -> None:
        """Leave together; tear the group down if this object made it."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            if self.created_group:
                dist.destroy_process_group()
                self.created_group = False


def leader_only(fn: Callable[[], Any], ranks: Ranks | None = None) -> Any:
    """Run ``fn`` on rank 0 only; the other ranks wait and get its (JSON-able) result, or its error
    as their own. For work that writes shared files and gains nothing from more processes.
    ``ranks``: the caller's :class:`Ranks` (its process group), else a new one."""
    ranks = ranks if ranks is not None else Ranks()
    if ranks.world == 1:
        return fn()
    if ranks.leader:
        try:
            result = fn()
        except BaseException as e:
            ranks.share({"error": f"rank 0 failed: {e}" if isinstance(e, KdpipeError) else f"rank 0 failed: {type(e).__name__}: {e}"})
            raise
        return ranks.share({"result": result})["result"]
    shared = ranks.share(None)
    if "error" in shared:
        raise KdpipeError(shared["error"])
    return shared["result"]
