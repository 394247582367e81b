"""Evaluation arithmetic: base/novel splits, accuracies, harmonic mean, per-seed rows and their mean."""

from kdpipe.eval.metrics import (
    MetricRow,
    base_count,
    harmonic_mean,
    mean_rows,
    split_accuracy,
)

__all__ = ["MetricRow", "base_count", "harmonic_mean", "mean_rows", "split_accuracy"]
