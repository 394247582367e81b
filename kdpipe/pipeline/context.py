"""What a stage function receives: :class:`StageContext`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdpipe.config import Config
from kdpipe.errors import KdpipeError
from kdpipe.pipeline.manifest import read_manifest
from kdpipe.progress import Progress


@dataclass
class StageContext:
    """What a stage function gets: its config, folders, upstream folders, log and progress."""

    name: str  # instance name, e.g. "baseline:coop@seed1"
    stage: str  # registered name, e.g. "baseline"
    member: str | None  # family member, e.g. "coop"
    seed: int | None  # the seed (run.seed as this instance sees it)
    cfg: Config
    dir: Path  # this stage's folder: write outputs here
    ckpt_dir: Path  # kept while the fingerprint is unchanged: save resumable state here
    inputs: dict[str, Path]  # upstream instance name (and plain stage name when unique) -> folder
    run_dir: Path
    log: logging.Logger
    fingerprint: str = ""
    reads: tuple[str, ...] = ()  # the config keys this instance declared
    upstream: tuple[str, ...] = ()  # upstream instance names (``inputs`` also has plain aliases)
    rank: int = 0  # under torchrun: this process's rank; only rank 0 should write outputs
    world_size: int = 1

    def progress(self, total: int | None, desc: str | None = None, unit: str = "step", initial: int = 0) -> Progress:
        """A progress bar (rich on a terminal, plain lines in CI) that also writes to the stage log."""
        return Progress(total, desc or self.name, unit=unit, initial=initial, log=self.log, quiet=self.rank != 0)

    def inputs_of(self, stage: str) -> dict[str, Path]:
        """All upstream instances of a registered stage or family: instance name -> folder."""
        return {n: self.inputs[n] for n in self.upstream if n.split("@")[0].split(":")[0] == stage}

    def metrics_of(self, name: str) -> dict[str, Any]:
        """The metrics an upstream instance recorded in its manifest."""
        if name not in self.inputs:
            raise KdpipeError(f"stage {self.name} has no input {name!r}; it has: {', '.join(self.inputs)}")
        return (read_manifest(self.inputs[name]) or {}).get("metrics", {})

    def param(self, key: str) -> Any:
        """Read a config value this stage declared in ``reads`` (others would not be fingerprinted)."""
        if not any(key == r or key.startswith(r + ".") for r in self.reads):
            raise KdpipeError(f"stage {self.stage} reads {key!r} without declaring it; add it to reads=[...]")
        return self.cfg.value(key)


