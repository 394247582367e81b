"""How a stage's headline metric reads in ``done``/``skip`` lines and ``kdpipe status``.

Scores print in one unit, percent with one decimal, whether a stage keeps a fraction in its
manifest (agreement, 0..1) or a percentage (accuracies, 0..100). Stages say how each metric they
return is printed with :func:`register_metric_format`; a metric nobody registered (counts, losses)
prints as a plain number, four significant digits.
"""

from __future__ import annotations

from typing import Any, Callable

# (key, value, all the stage's metrics) -> "label=value"
MetricFormat = Callable[[str, Any, dict], str]
FORMATS: dict[str, MetricFormat] = {}


def register_metric_format(key: str, fmt: MetricFormat) -> None:
    FORMATS[key] = fmt


def plain(key: str, value: Any, metrics: dict) -> str:
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


def fraction_as_percent(key: str, value: float, metrics: dict) -> str:
    return f"{key}={100 * value:.1f}%"


def format_metric(key: str, metrics: dict) -> str:
    """``key=value`` in the key's registered unit; empty when the metric is missing."""
    value = metrics.get(key)
    if value is None:
        return ""
    return FORMATS.get(key, plain)(key, value, metrics)
