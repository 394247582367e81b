"""Running one prepared stage instance: its folder, its log, its function, its manifest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from kdpipe.dist import Ranks
from kdpipe.errors import KdpipeError
from kdpipe.io import json_default, read_json_or_none, write_json
from kdpipe.pipeline.context import StageContext
from kdpipe.pipeline.graph import Instance
from kdpipe.pipeline.lock import StageLock
from kdpipe.pipeline.manifest import (
    ATTEMPT, CKPT, FAILED, LOG, MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, hash_outputs, library_versions, now,
    one_line, outputs_digest,
)
from kdpipe.pipeline.plan import Plan
from kdpipe.progress import close_logger, format_duration, stage_logger


def clear_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare(folder: Path, fingerprint: str, fresh: bool, inputs: dict[str, str | None] | None = None) -> None:
    """Make the folder ready for an attempt: no manifest, and a checkpoint only if it is ours.

    A checkpoint is ours when the settings (``fingerprint``) and the upstream outputs it was made
    from (``inputs``: upstream instance -> outputs digest) are both unchanged: a re-run upstream
    stage with the same settings (a non-deterministic teacher after --force) gives other inputs,
    and resuming a finished checkpoint would keep a result made from the old ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    holder = StageLock.holder(folder)
    if holder is not None:  # e.g. a worker of a killed runner, still training here
        raise KdpipeError(StageLock(folder).busy_message(holder))
    # The old manifest goes first: a crash from here on can never leave it looking valid.
    (folder / MANIFEST).unlink(missing_ok=True)
    (folder / FAILED).unlink(missing_ok=True)
    attempt = read_json_or_none(folder / ATTEMPT) or {}
    inputs = inputs or {}
    if fresh or attempt.get("fingerprint") != fingerprint or attempt.get("inputs", {}) != inputs:
        # Other settings, other inputs (or --force): checkpoints and half-written outputs are not ours to resume.
        clear_folder(folder)
    write_json(folder / ATTEMPT, {"fingerprint": fingerprint, "inputs": inputs, "pid": os.getpid(), "started_at": now()},
               sort_keys=True, fsync=True)
    (folder / CKPT).mkdir(exist_ok=True)


def execute_instance(plan: Plan, run_dir: Path, inst: Instance, ranks: Ranks) -> tuple[dict[str, Any], float]:
    exp = plan.expected(inst.name)
    folder = run_dir / inst.folder
    ckpt = folder / CKPT
    cfg = plan.config_for(inst.name)
    inputs: dict[str, Path] = {}
    plain_names: dict[str, list[str]] = {}
    for d in inst.deps:
        inputs[d] = run_dir / plan.instances[d].folder
        plain_names.setdefault(d.split("@")[0], []).append(d)
    for plain, names in plain_names.items():
        if len(names) == 1 and plain not in inputs:
            inputs[plain] = inputs[names[0]]
    # Other ranks log to their own file and stay off the console (rank 0 speaks for the run).
    log_file = folder / (LOG if ranks.leader else f"log.rank{ranks.rank}.txt")
    log = stage_logger(inst.name if ranks.leader else f"{inst.name}.rank{ranks.rank}", log_file, console=ranks.leader)
    log.debug(f"start {inst.name} fingerprint {exp.fingerprint} reads {json.dumps(exp.config, sort_keys=True)}")
    seed = inst.seed if inst.seed is not None else (cfg.value(plan.graph.seed_key) if plan.graph.seed_key in plan.graph.schema.keys() else None)
    ctx = StageContext(
        name=inst.name, stage=inst.spec.name, member=inst.member, seed=seed, cfg=cfg, dir=folder, ckpt_dir=ckpt,
        inputs=inputs, run_dir=run_dir, log=log, fingerprint=exp.fingerprint, reads=tuple(inst.reads(plan.graph.seed_key)),
        upstream=tuple(inst.deps), rank=ranks.rank, world_size=ranks.world,
    )
    # the leader owns the folder while the stage runs (other torchrun ranks are its DDP peers)
    owner = StageLock(folder) if ranks.leader else contextlib.nullcontext()
    t0 = time.monotonic()
    started = now()
    try:
        with owner:
            metrics = inst.spec.fn(ctx) or {}
        if not isinstance(metrics, dict):
            raise KdpipeError(f"stage {inst.name} returned {type(metrics).__name__}; a stage returns a dict of metrics")
        wall = time.monotonic() - t0
        metrics = json.loads(json.dumps(metrics, default=json_default))
        if not ranks.leader:
            return metrics, wall
        for pattern in inst.spec.outputs:
            if not any(p.is_file() for p in folder.glob(pattern)):
                raise KdpipeError(f"stage {inst.name} did not write its declared output {pattern}")
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "stage": inst.name,
            "stage_version": inst.spec.version,
            "fingerprint": exp.fingerprint,
            "config": exp.config,
            "upstream": {
                d: {"fingerprint": exp.upstream[d], "outputs": outputs_digest(run_dir / plan.instances[d].folder)}
                for d in inst.deps
            },
            "identity": exp.identity,
            "outputs": hash_outputs(folder),
            "metrics": metrics,
            "wall_time_s": round(wall, 3),
            "started_at": started,
            "finished_at": now(),
            "versions": library_versions(),
            "world_size": ranks.world,
        }
        write_json(folder / MANIFEST, manifest, sort_keys=True, fsync=True)
        log.debug(f"done in {format_duration(wall)}")
        return metrics, wall
    except KeyboardInterrupt:
        # Not a failure of the stage: status reports it as interrupted (and resumable from ckpt/).
        log.warning("interrupted; run the same command again to resume")
        raise
    except BaseException as e:
        if isinstance(e, KdpipeError):
            reason = one_line(str(e))
        else:
            reason = one_line(f"{type(e).__name__}: {e} (traceback in {log_file})")
        log.error(f"failed: {reason}")
        log.debug("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        if ranks.leader:
            # on a full disk this note does not fit either: the stage's own error is the one to report
            with contextlib.suppress(KdpipeError):
                write_json(folder / FAILED, {"reason": reason, "error": type(e).__name__, "at": now()}, sort_keys=True, fsync=True)
        raise
    finally:
        close_logger(log)


