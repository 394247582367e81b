"""What several PromptKD stages share: seeds, devices, dataset splits, and trained-method files.

A trained method is stored as ``NAME.safetensors`` (its learned state only, never the frozen CLIP,
with the method's ``checkpoint_meta`` — method, backbone, class names, config — in its metadata)
plus ``NAME.json`` (the same meta and run facts such as the seed, for people and tools).
:func:`load_method` rebuilds the method from the safetensors file alone.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from kdpipe.errors import KdpipeError
from kdpipe.stages.outputs import write_json


TRANSDUCTIVE_NOTE = (
    "the student was distilled on unlabeled train images of ALL classes, base and novel "
    "(PromptKD's transductive setting); teacher and baselines saw labelled base classes only"
)
TRANSDUCTIVE_NOTE_CROSS = (
    "the student was distilled on unlabeled train images of every class of the evaluated dataset "
    "(PromptKD's transductive setting); teacher and baselines learned few-shot from {source}"
)


def transductive_note(cfg) -> str:
    d = cfg["data"]
    return TRANSDUCTIVE_NOTE if d.mode == "base2novel" else TRANSDUCTIVE_NOTE_CROSS.format(source=d.train_dataset)


def upstream(ctx, stage: str) -> Path:
    """The folder of the one instance of ``stage`` (a seeded stage: the one with this seed) feeding ``ctx``."""
    found = {Path(p) for p in ctx.inputs_of(stage).values()}
    if len(found) != 1:
        raise KdpipeError(f"stage {ctx.name} expected one {stage} input, found {len(found)}: {', '.join(sorted(map(str, found)))}")
    return found.pop()


def data_identity(cfg) -> dict[str, Any]:
    """What a dataset-reading stage's result depends on besides config: the exact items and labels."""
    return _cached_identity(cfg["data"].dataset, data_root(cfg))


def source_identity(cfg) -> dict[str, Any]:
    """:func:`data_identity` of the dataset few-shot training reads (``data.source`` or ``data.dataset``).

    Its name is part of it, so the teacher and baselines re-train when that dataset changes, and
    not when only the target changes in cross-dataset mode (an ImageNet teacher is costly).
    """
    return _cached_identity(cfg["data"].train_dataset, data_root(cfg))


def _cached_identity(dataset: str, root: Path) -> dict[str, Any]:
    # Every stage instance asks while a run is planned; reading a big dataset once per plan is
    # enough. The folder times in the key make an edited data root (files added, removed or
    # replaced) read afresh within a long-lived process.
    root = root.resolve()
    try:
        stamp = (root.stat().st_mtime_ns,) + tuple(
            sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(root) if e.is_dir())
        )
    except OSError:
        stamp = ()
    return _data_identity(dataset, str(root), stamp)


@functools.lru_cache(maxsize=8)
def _data_identity(dataset: str, root: str, stamp: tuple) -> dict[str, Any]:
    import hashlib

    from kdpipe.data import load_dataset

    splits = load_dataset(dataset, root)
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        for item in getattr(splits, name):
            h.update(f"{name}\t{os.path.relpath(item.path, root)}\t{item.label}\n".encode())
    h.update("\n".join(splits.classnames).encode())
    # the root itself is left out: moving the data elsewhere does not make results stale
    return {"dataset": dataset, "items": h.hexdigest()}


def fewshot_cache(ctx) -> Path:
    return Path(ctx.run_dir) / "cache" / "few-shot"


def device_of(cfg) -> "Any":
    from kdpipe.train.device import pick_device

    return pick_device(cfg["run"].device)


def data_root(cfg) -> Path:
    return Path(os.path.expanduser(cfg["data"].root))


def load_splits(cfg, source: bool = False):
    """Every class of ``data.dataset`` (labels sorted, base first), or of the few-shot training
    dataset (``data.source``, when set) with ``source=True``."""
    from kdpipe.data import load_dataset

    d = cfg["data"]
    return load_dataset(d.train_dataset if source else d.dataset, data_root(cfg))


def train_transform(cfg, backbone):
    """The training augmentation at ``backbone``'s resolution with ``data.crop_scale``."""
    from kdpipe.data.transforms import transform_for

    scale = tuple(cfg["data"].crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise KdpipeError(f"data.crop_scale must be two area fractions 0 < low <= high <= 1, got {list(scale)}")
    return transform_for(backbone, True, scale=scale)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's under torchrun, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (bytes over a CPU tensor: nothing is unpickled)."""
    import json

    import torch
    import torch.distributed as dist

    leader = dist.get_rank() == 0
    data = json.dumps(obj).encode() if leader else b""
    size = torch.tensor([len(data)], dtype=torch.long)
    dist.broadcast(size, src=0)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if leader else torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.tolist()).decode())


def leader_only(fn: Callable[[], dict]) -> dict:
    """Run a stage body on rank 0 only (under torchrun the runner runs every stage on every rank):
    for stages that write shared files and gain nothing from more processes. The other ranks wait
    for rank 0 and get its metrics, or its error as their own."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    if dist.get_rank() == 0:
        try:
            result = fn()
        except BaseException as e:
            _broadcast_json({"error": f"rank 0 failed: {e}" if isinstance(e, KdpipeError) else f"rank 0 failed: {type(e).__name__}: {e}"})
            raise
        return _broadcast_json({"result": result})["result"]
    shared = _broadcast_json(None)
    if "error" in shared:
        raise KdpipeError(shared["error"])
    return shared["result"]


def worker_init(_worker_id: int) -> None:
    # two busy processes on few cores spin-wait in OpenMP and crawl; one thread per worker is faster
    import torch

    torch.set_num_threads(1)


def resumed_step(ckpt_dir: str | Path) -> int:
    """Optimizer steps already done according to the training loop's last checkpoint (0: none)."""
    import json

    try:
        return int(json.loads((Path(ckpt_dir) / "last.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def step_reporter(bar, epochs: int, images_per_step: Callable[[], int]) -> Callable[[dict], None]:
    """A ``fit`` progress callback feeding a stage progress bar (step, images/s, epoch, loss, lr)."""

    def report(info: dict) -> None:
        bar.update(1, images=images_per_step(), epoch=f"{info['epoch'] + 1}/{epochs}", loss=info["loss"], lr=info["lr"])

    return report


def save_method(method, path_stem: str | Path, **facts: Any) -> dict[str, Path]:
    """``<stem>.safetensors`` (learned state, meta inside) + ``<stem>.json`` (meta + facts, for people)."""
    from kdpipe.methods import save_learned

    stem = Path(path_stem)
    weights = save_learned(method, stem.with_suffix(".safetensors"))
    info = write_json(stem.with_suffix(".json"), {**method.checkpoint_meta(), **facts})
    return {"weights": weights, "meta": info}


def load_method(path_stem: str | Path, device="cpu", backbone=None, dataset: str | None = None):
    """Rebuild a method saved by :func:`save_method` on ``device`` (loading its backbone unless given).

    ``dataset`` replaces the dataset it was trained on where the method uses it for scoring (the
    hand templates of zero-shot CLIP), for evaluation on another dataset; its settings are kept.
    """
    from kdpipe.clip import load_backbone
    from kdpipe.methods import build_method, read_learned

    state, meta = read_learned(Path(path_stem).with_suffix(".safetensors"))
    if backbone is None:
        backbone = load_backbone(meta["backbone"], device=device)
    method = build_method(meta["method"], backbone, meta["classnames"], overrides=meta["config"], dataset=dataset or meta.get("dataset"))
    method.to(device)
    method.load_learned_state_dict({k: v.to(device) for k, v in state.items()}, meta)
    return method.eval(), meta
