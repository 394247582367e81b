"""Which orderings in a results table are within seed noise.

PromptKD's users report the same method at 83.4 / 73.1 / 81.8 over three seeds, so a table that
ranks one method above another by less than that spread claims more than it shows. The rule here:
on each dataset, rank the seed-mean rows by their score (HM where the row has one, else all-class
accuracy); each row claims to beat the row ranked just below it. The claim is **flagged** when its
gap is smaller than the standard deviation over seeds of either row (the larger of the two), the
same population std the tables print after ±. Rows without a spread (one seed) are never flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from kdpipe.eval.metrics import MetricRow


@dataclass(frozen=True)
class SpreadFlag:
    """``row`` leads ``over`` on ``dataset`` by ``gap`` points of ``score``, less than ``std``."""

    dataset: str
    score: str  # "hm" | "accuracy"
    row: str  # label of the row that claims the lead (see row_label)
    over: str  # label of the row it claims to beat
    gap: float
    std: float  # the larger of the two rows' std over seeds

    def to_dict(self) -> dict:
        return asdict(self)

    def note(self) -> str:
        name = "HM" if self.score == "hm" else "accuracy"
        return (f"{self.dataset}: {self.row} leads {self.over} by {self.gap:.1f} {name}, less than the std over seeds "
                f"({self.std:.1f}); the order of these two is within seed noise")


def row_label(r: MetricRow) -> str:
    """``coop``, ``promptkd (student, transductive)``: what a note calls a row."""
    if r.role == "baseline":
        return r.method
    return f"{r.method} ({r.role}{', ' + r.protocol if r.protocol else ''})"


def row_identity(r: MetricRow) -> tuple:
    """What tells two rows apart within one table (the seed aside)."""
    return (r.role, r.method, r.backbone, r.protocol, r.dataset)


def _score(r: MetricRow) -> tuple[str, float | None]:
    key = "hm" if r.hm is not None else "accuracy"
    return key, getattr(r, key)


def spread_flags(rows: Iterable[MetricRow]) -> list[tuple[MetricRow, SpreadFlag]]:
    """Each flagged seed-mean row with its flag, datasets in first-seen order, best row first."""
    by_dataset: dict[str, list[MetricRow]] = {}
    for r in rows:
        if r.seed == "mean" and _score(r)[1] is not None:
            by_dataset.setdefault(r.dataset, []).append(r)
    out = []
    for dataset, members in by_dataset.items():
        ranked = sorted(members, key=lambda r: -_score(r)[1])
        for hi, lo in zip(ranked, ranked[1:]):
            key, high = _score(hi)
            low_key, low = _score(lo)
            if low_key != key:  # HM and accuracy are not one scale
                continue
            stds = [s for s in (hi.extra.get(f"{key}_std"), lo.extra.get(f"{key}_std")) if s is not None]
            if stds and high - low < max(stds):
                out.append((hi, SpreadFlag(dataset, key, row_label(hi), row_label(lo), round(high - low, 4), round(max(stds), 4))))
    return out
