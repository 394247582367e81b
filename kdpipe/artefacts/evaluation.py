"""``metrics.json`` of the ``evaluate`` stage: one row per method scored (``rows``, the fields of
:class:`kdpipe.eval.metrics.MetricRow`), the notes under the report's table and what was scored
(``split``, ``mode``, ``source``, ``targets`` ...). The ``report`` stage reads every seed's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdpipe.io import read_json, write_json

METRICS = "metrics.json"


def write_evaluation(stage_dir: str | Path, data: dict[str, Any]) -> None:
    write_json(Path(stage_dir) / METRICS, data)


def read_evaluation(stage_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(stage_dir) / METRICS)
