"""``curves.json``: the ``distill`` stage's per-epoch held-out agreement and KD loss (epoch 0 = the
untrained student) and the training history, drawn by the ``report`` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdpipe.io import read_json, write_json

CURVES = "curves.json"


def write_curves(stage_dir: str | Path, seed: int, curve: list[dict], history: list[dict]) -> None:
    write_json(Path(stage_dir) / CURVES, {"seed": seed, "curve": curve, "history": history})


def read_curves(stage_dir: str | Path) -> dict[str, Any]:
    """``{"seed", "curve", "history"}`` as :func:`write_curves` wrote them."""
    return read_json(Path(stage_dir) / CURVES)
