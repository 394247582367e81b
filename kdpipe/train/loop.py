"""``fit``: the one training loop. Methods and distillation bring a step function, never a loop.

It is generic over what a step does and where batches come from:
  - ``batches(epoch, skip)`` yields the batches of ``epoch``, leaving out the first ``skip`` ones
    (already trained before a resume). Make it deterministic per (seed, epoch) and it does not use
    the global RNG, and a resumed run sees exactly the batches an uninterrupted one would;
  - ``step(batch) -> (loss, logs)`` computes the loss of one batch (already on ``device``).
The module is passed in (no global state). Under ``torch.distributed`` (torchrun) each rank
feeds its own share of the data; ``fit`` averages the learned parameters' gradients over ranks
after every backward, so R ranks with batch b train like one process with batch R*b, and only
rank 0 writes checkpoints. (A DDP-wrapped module also works: hooks and state are read through it.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from kdpipe.dist import rank_world
from kdpipe.errors import KdpipeError
from kdpipe.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from kdpipe.train.device import autocast, needs_grad_scaler, pick_device
from kdpipe.train.schedule import OptimConfig, build_optimizer, lr_at

Batches = Callable[[int, int], Iterable[Any]]
Step = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]
CHECKPOINT_FORMAT = 1


@dataclass
class _Position:
    epoch: int = 0  # epoch being trained (== epochs when done)
    batch: int = 0  # batches of this epoch already trained
    step: int = 0  # optimizer steps over the whole run
    history: list[dict[str, float]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)  # running sums of this epoch's logs


def fit(
    module: nn.Module,
    learned_params: Sequence[tuple[str, nn.Parameter]] | Sequence[nn.Parameter],
    epochs: int,
    batches: Batches,
    step: Step,
    optim: OptimConfig,
    *,
    ckpt_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    after_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``learned_params`` of ``module``; returns one dict of mean logs per epoch.

    Checkpoints (atomic) after every epoch and every ``checkpoint_every`` steps; when ``ckpt_dir``
    already holds one, training resumes from it, mid-epoch included. Modules with
    ``train_state_dict``/``load_train_state_dict`` (every PromptMethod) checkpoint through them, so
    buffers and training-only state (BatchNorm statistics, GPA sums) survive a resume; their
    ``on_epoch_end(epoch, epochs)`` and ``finalize()`` hooks are called when present.
    ``progress(info)`` is called after every step; ``after_epoch(row)`` once each epoch is trained,
    with its history row (``row["epoch"]`` counts from 1), after the module's hook and before the
    epoch's checkpoint, so a run stopped in between calls it again when it resumes.
    """
    device = pick_device(device)
    rank, world = rank_world()
    core = _unwrap(module)  # hooks and state live on the wrapped module under DDP
    named = _named(core, learned_params)
    learned_ids = {id(p) for _, p in named}
    for p in module.parameters():
        p.requires_grad_(id(p) in learned_ids)
    module.to(device)
    opt = build_optimizer([p for _, p in named], optim)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, amp) else None
    identity = {"format": CHECKPOINT_FORMAT, "epochs": epochs, "seed": seed, "params": [n for n, _ in named]}

    pos = _Position()
    seed_everything(seed)
    resumed = load_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if resumed is not None:
        pos = _restore(core, named, opt, scaler, identity, ckpt_dir, *resumed)

    def checkpoint() -> None:
        if ckpt_dir is not None and rank == 0:
            _save(ckpt_dir, core, named, opt, scaler, identity, pos)

    for epoch in range(pos.epoch, epochs):
        lr = lr_at(epoch, epochs, optim)
        for group in opt.param_groups:
            group["lr"] = lr
        module.train()
        for batch in batches(epoch, pos.batch):
            batch = _to_device(batch, device)
            with autocast(device, amp):
                loss, logs = step(batch)
            value = float(loss.detach())
            if not math.isfinite(value) and scaler is None:  # fp16 overflows are the scaler's to skip
                raise KdpipeError(
                    f"loss became {value} at epoch {epoch + 1}, step {pos.step + 1}; lower the learning rate (now {lr:g})"
                )
            _optimizer_step(loss, opt, scaler, [p for _, p in named], world)
            pos.batch += 1
            pos.step += 1
            _accumulate(pos.sums, {"loss": value, **logs})
            if progress is not None:
                progress({"epoch": epoch, "epochs": epochs, "batch": pos.batch, "step": pos.step, "lr": lr, "loss": value, **logs})
            if checkpoint_every and pos.step % checkpoint_every == 0:
                checkpoint()
        if pos.batch == 0 and not pos.sums:
            raise KdpipeError(f"epoch {epoch + 1} produced no batches; is the training set empty or smaller than the batch?")
        n = pos.sums.pop("_count", 1)
        row = {"epoch": epoch + 1, "lr": lr, "steps": int(n), **{k: v / n for k, v in pos.sums.items()}}
        pos.history.append(row)
        if hasattr(core, "on_epoch_end"):
            core.on_epoch_end(epoch, epochs)
        if after_epoch is not None:
            after_epoch(dict(row))  # a copy: the callback cannot alter the recorded history
        pos.epoch, pos.batch, pos.sums = epoch + 1, 0, {}
        checkpoint()
    if hasattr(core, "finalize"):
        core.finalize()
    module.eval()
    return pos.history


def _optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler, params: list[nn.Parameter], world: int) -> None:
    opt.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if world > 1:
        _average_gradients(params, world)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """All-reduce the learned gradients (prompts and projectors are small: one flat buffer)."""
    import torch.distributed as dist

    # every rank runs the same graph, so the same parameters have gradients everywhere
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _unwrap(module: nn.Module) -> nn.Module:
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    return module


def _named(module: nn.Module, params) -> list[tuple[str, nn.Parameter]]:
    params = list(params)
    if params and isinstance(params[0], tuple):
        named = [(n, p) for n, p in params]
    else:
        names = {id(p): n for n, p in module.named_parameters()}
        named = [(names.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
    if not named:
        raise KdpipeError("nothing to train: no learned parameters were given")
    return named


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _accumulate(sums: dict[str, float], logs: dict[str, float]) -> None:
    sums["_count"] = sums.get("_count", 0) + 1
    for k, v in logs.items():
        sums[k] = sums.get(k, 0.0) + float(v)


def _module_state(module: nn.Module, named) -> dict[str, torch.Tensor]:
    if hasattr(module, "train_state_dict"):
        return module.train_state_dict()
    return {n: p.detach() for n, p in named}


def _save(ckpt_dir, module, named, opt, scaler, identity, pos: _Position) -> None:
    tensors = {f"state.{k}": v for k, v in _module_state(module, named).items()}
    for i, p in enumerate(p for _, p in named):
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{i}.{key}"] = value
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta = {
        **identity,
        "epoch": pos.epoch,
        "batch": pos.batch,
        "step": pos.step,
        "history": pos.history,
        "sums": pos.sums,
        "rng": rng_meta,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "saved_at": time.time(),
    }
    save_checkpoint(ckpt_dir, pos.step, tensors, meta)


def _restore(module, named, opt, scaler, identity, ckpt_dir, tensors, meta) -> _Position:
    theirs = {k: meta.get(k) for k in identity}
    if theirs != identity:
        diff = [k for k in identity if theirs[k] != identity[k]]
        raise KdpipeError(
            f"checkpoint in {ckpt_dir} belongs to a different run ({', '.join(diff)} differ); "
            "delete that folder to start over or point to the run's own checkpoint folder"
        )
    state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
    if hasattr(module, "load_train_state_dict"):
        module.load_train_state_dict(state)
    else:
        with torch.no_grad():
            for n, p in named:
                p.copy_(state[n])
    device = named[0][1].device
    for i, p in enumerate(p for _, p in named):
        buffers = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
        if buffers:
            opt.state[p] = {k: v.to(device) for k, v in buffers.items()}
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    set_rng_state(tensors, meta["rng"])
    return _Position(meta["epoch"], meta["batch"], meta["step"], meta["history"], meta["sums"])
