"""Results as people read them: Markdown and CSV tables, a base/novel/HM bar chart, training curves.

Plots use matplotlib's Agg backend (no display needed) and every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Sequence

from kdpipe.eval.metrics import MetricRow
from kdpipe.io import atomic_path, write_text

COLUMNS = ("method", "role", "backbone", "dataset", "seed", "base", "novel", "hm", "accuracy")
ROLE_ORDER = {"teacher": 0, "student": 1, "baseline": 2}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def sort_rows(rows: Iterable[MetricRow]) -> list[MetricRow]:
    """Teacher, student, then baselines; per method the seeds in order and the mean last."""
    rows = list(rows)
    first_seen = {}
    for i, r in enumerate(rows):
        first_seen.setdefault((r.role, r.method), i)
    return sorted(
        rows,
        key=lambda r: (
            r.dataset,
            ROLE_ORDER.get(r.role, 9),
            first_seen[(r.role, r.method)],
            r.seed == "mean",
            str(r.seed),
        ),
    )


def markdown_table(rows: Sequence[MetricRow], notes: Sequence[str] = ()) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in sort_rows(rows):
        d = r.to_dict()
        cells = [_fmt(d[c]) for c in COLUMNS]
        if r.seed == "mean":
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


def csv_table(rows: Sequence[MetricRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in sort_rows(rows):
        d = r.to_dict()
        w.writerow(["" if d[c] is None else (round(d[c], 4) if isinstance(d[c], float) else d[c]) for c in COLUMNS])
    return buf.getvalue()


def write_tables(
    rows: Sequence[MetricRow], out_dir: str | Path, title: str = "Results", notes: Sequence[str] = (), images: Sequence[str] = ()
) -> dict[str, Path]:
    """``results.md`` (with ``images``, file names beside it, shown under the table) and ``results.csv``."""
    out_dir = Path(out_dir)
    md = f"# {title}\n\nAccuracy in percent on the test split; HM = 2·base·novel/(base+novel); " \
         "mean rows average base and novel over seeds and take the HM of those averages.\n\n"
    md += markdown_table(rows, notes)
    if images:
        md += "\n" + "\n".join(f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in images) + "\n"
    return {
        "markdown": write_text(out_dir / "results.md", md),
        "csv": write_text(out_dir / "results.csv", csv_table(rows)),
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_base_novel(rows: Sequence[MetricRow], path: str | Path, title: str = "") -> Path:
    """Grouped bars of base, novel and HM per method (mean rows when there are several seeds);
    bars of all-class accuracy when there is no base/novel split (cross-dataset)."""
    plt = _pyplot()
    rows = sort_rows(rows)
    means = [r for r in rows if r.seed == "mean"]
    shown = means or rows
    labels = [f"{r.method}\n({r.role})" if r.role != "baseline" else r.method for r in shown]
    if any(r.base is not None for r in shown):
        series = [("base", "#4c72b0"), ("novel", "#dd8452"), ("hm", "#55a868")]
    else:
        series = [("accuracy", "#4c72b0")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(shown) + 2), 4))
    for i, (key, colour) in enumerate(series):
        values = [getattr(r, key) if getattr(r, key) is not None else 0.0 for r in shown]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(shown))]
        bars = ax.bar(xs, values, width, label=key.upper() if key == "hm" else key, color=colour)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(shown)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right", fontsize=8, ncols=3)
    ax.set_title(title or ("base / novel / HM per method" if len(series) > 1 else "accuracy per method"))
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_curves(curves: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Distillation loss (left) and student-teacher agreement (right) per epoch, one line per seed.

    ``curves`` maps a label (e.g. ``seed 1``) to a list of ``{"epoch", "kd_loss", "agreement"}``;
    epoch 0 is the untrained student.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_agree) = plt.subplots(1, 2, figsize=(9, 3.5))
    for label, points in curves.items():
        pts = sorted(points, key=lambda p: p["epoch"])
        loss = [(p["epoch"], p["train_loss"]) for p in pts if p.get("train_loss") is not None]
        held = [(p["epoch"], p["kd_loss"]) for p in pts if p.get("kd_loss") is not None]
        agree = [(p["epoch"], 100.0 * p["agreement"]) for p in pts if p.get("agreement") is not None]
        if loss:
            ax_loss.plot(*zip(*loss), marker="o", ms=3, label=f"{label} train")
        if held:
            ax_loss.plot(*zip(*held), marker="x", ms=3, ls="--", label=f"{label} held-out")
        if agree:
            ax_agree.plot(*zip(*agree), marker="o", ms=3, label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_agree):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("KD loss")
    ax_loss.set_title("distillation loss")
    ax_agree.set_xlabel("epoch")
    ax_agree.set_ylabel("top-1 agreement (%)")
    ax_agree.set_title("student-teacher agreement (held-out)")
    ax_agree.set_ylim(0, 102)
    for ax in (ax_loss, ax_agree):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
