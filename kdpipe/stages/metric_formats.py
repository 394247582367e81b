"""The units of the stage metrics that ``kdpipe run`` and ``kdpipe status`` print as headlines.

Manifests keep each metric as its stage computes it: ``agreement`` and ``agreement_start``
(distill) are fractions 0..1; ``student`` and ``teacher`` (evaluate, report) are percentages
0..100 of the score that the metric ``score`` names (``hm`` base-to-novel, ``accuracy``
cross-dataset); ``teacher_gain`` (world) is in HM points. Printed, they all read as percent (or
points) with one decimal, and an HM is called HM.
"""

from __future__ import annotations

from kdpipe.pipeline.metric_units import fraction_as_percent, register_metric_format

SCORE_NAMES = {"hm": "HM", "accuracy": "accuracy"}


def score_percent(key: str, value: float, metrics: dict) -> str:
    """``student HM=81.1%``; manifests written before ``score`` existed print ``student=81.1%``."""
    score = SCORE_NAMES.get(metrics.get("score"))
    return f"{key} {score}={value:.1f}%" if score else f"{key}={value:.1f}%"


def hm_points(key: str, value: float, metrics: dict) -> str:
    return f"{key}={value:+.1f} HM points"


for _key in ("agreement", "agreement_start"):
    register_metric_format(_key, fraction_as_percent)
for _key in ("student", "teacher"):
    register_metric_format(_key, score_percent)
register_metric_format("teacher_gain", hm_points)
