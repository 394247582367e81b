"""The held-out student-teacher agreement of each epoch, kept across a resumed distillation."""

from __future__ import annotations

from pathlib import Path

from kdpipe.io import read_json, write_json


class AgreementLog:
    """Per-epoch held-out probes, kept in the checkpoint folder so a resumed run keeps earlier ones
    (written by rank 0, like the loop's checkpoints)."""

    def __init__(self, path: Path, write: bool = True):
        self.path = path
        self.write = write
        self.points: dict[int, dict[str, float]] = {}
        if path.is_file():
            self.points = {int(k): v for k, v in read_json(path).items()}

    def __contains__(self, epoch: int) -> bool:
        return epoch in self.points

    def record(self, epoch: int, values: dict[str, float]) -> None:
        self.points[epoch] = values
        if self.write:
            write_json(self.path, {str(k): v for k, v in sorted(self.points.items())})
