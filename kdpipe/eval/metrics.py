"""Base/novel accuracy, harmonic mean and the seed average, as the prompt-learning papers report them.

Base classes are the first ``ceil(C/2)`` of the sorted labels, novel the rest (CoCoOp's split).
Base accuracy is measured on base-class test images scored against base classes only, novel on
novel-class images against novel classes only; HM = 2BN/(B+N). Over seeds, the papers average base
and novel and take the HM of those averages (not the mean of per-seed HMs); :func:`mean_rows` does
the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import mean, pstdev
from typing import Iterable

import torch


def base_count(num_classes: int) -> int:
    """Number of base classes among ``num_classes`` sorted labels: ``ceil(C/2)``."""
    return (num_classes + 1) // 2


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def split_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_base: int | None = None) -> dict[str, float | None]:
    """Base, novel, HM and all-class accuracy (percent) from logits over ALL classes, base first.

    Each split is scored within its own classes: the base columns for base images, the novel
    columns (re-indexed from 0) for novel images, as in the base-to-novel protocol. ``num_base``
    defaults to ``ceil(C/2)``; with ``num_base == C`` (cross-dataset) novel and HM are None.
    """
    num_classes = logits.shape[1]
    nb = base_count(num_classes) if num_base is None else num_base
    labels = labels.to(logits.device)
    is_base = labels < nb

    def acc(pred: torch.Tensor, target: torch.Tensor) -> float | None:
        return None if target.numel() == 0 else 100.0 * (pred == target).float().mean().item()

    base = acc(logits[is_base, :nb].argmax(1), labels[is_base])
    novel = acc(logits[~is_base, nb:].argmax(1), labels[~is_base] - nb) if nb < num_classes else None
    return {
        "base": base,
        "novel": novel,
        "hm": harmonic_mean(base, novel),
        "accuracy": acc(logits.argmax(1), labels),
    }


@dataclass
class MetricRow:
    """One line of ``metrics.json``: accuracies in percent; ``seed`` is an int or ``"mean"``."""

    method: str
    role: str  # teacher | student | baseline
    backbone: str
    dataset: str
    seed: int | str
    base: float | None
    novel: float | None
    hm: float | None
    accuracy: float | None = None  # all classes at once (the cross-dataset number)
    extra: dict = field(default_factory=dict)  # e.g. per-seed std on mean rows
    # the student's unlabeled set: "transductive" (novel or target images in it), "inductive" or
    # "user shards" (kdpipe/stages/shards.py); None for methods that learn from labels only
    protocol: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _avg(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present and len(present) == len(values) else None


def mean_rows(rows: Iterable[MetricRow]) -> list[MetricRow]:
    """One ``seed="mean"`` row per (method, role, backbone, dataset, protocol), in first-seen order.

    The protocol is part of the group: a student distilled on novel-class images (transductive)
    and one that never saw them (inductive) are different results and never share a mean.
    """
    groups: dict[tuple, list[MetricRow]] = {}
    for r in rows:
        if r.seed != "mean":
            groups.setdefault((r.method, r.role, r.backbone, r.dataset, r.protocol), []).append(r)
    out = []
    for (method, role, backbone, dataset, protocol), members in groups.items():
        base = _avg([m.base for m in members])
        novel = _avg([m.novel for m in members])
        extra = {"seeds": [m.seed for m in members]}
        # the spread of per-seed HMs (the mean row's HM itself is the HM of the averages)
        for key in ("base", "novel", "hm", "accuracy"):
            vals = [getattr(m, key) for m in members]
            if len(members) > 1 and all(v is not None and not math.isnan(v) for v in vals):
                extra[f"{key}_std"] = pstdev(vals)
        out.append(
            MetricRow(
                method=method,
                role=role,
                backbone=backbone,
                dataset=dataset,
                seed="mean",
                base=base,
                novel=novel,
                hm=harmonic_mean(base, novel),
                accuracy=_avg([m.accuracy for m in members]),
                extra=extra,
                protocol=protocol,
            )
        )
    return out
