"""Results as people read them: Markdown and CSV tables, a base/novel/HM bar chart, training curves.

Plots use matplotlib's Agg backend (no display needed) and every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Sequence

from kdpipe.eval.labels import backbone_label
from kdpipe.eval.metrics import MetricRow
from kdpipe.eval.seed_spread import SpreadFlag, row_identity, spread_flags
from kdpipe.io import atomic_path, write_json, write_text

# protocol: the student's unlabeled set (transductive / inductive / user shards), "-" on other rows
COLUMNS = ("method", "role", "backbone", "dataset", "seed", "base", "novel", "hm", "accuracy", "protocol")
SCORES = ("base", "novel", "hm", "accuracy")
# results.csv is for scripts: the seed spread gets columns of its own instead of "a ± b" text
CSV_COLUMNS = COLUMNS + tuple(f"{k}_std" for k in SCORES)
ROLE_ORDER = {"teacher": 0, "student": 1, "baseline": 2}
HEADER = (
    "Accuracies in percent on the test split, one decimal. HM = 2·base·novel/(base+novel); "
    "`accuracy` scores every test image against all classes at once (base ∪ novel), the "
    "cross-dataset number. Mean rows average base and novel over seeds and take the HM of those "
    "averages; ± is the standard deviation over seeds (population; for HM, of the per-seed HMs).\n\n"
)
# after a seed mean that leads the next-ranked row by less than the std over seeds (eval/seed_spread.py)
SPREAD_MARK = "†"
# what :func:`write_results` writes the rows to, and :mod:`kdpipe.report_runs` reads them from
METRICS = "metrics.json"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    if _missing(v):
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _std(row: MetricRow, key: str) -> float | None:
    return row.extra.get(f"{key}_std") if row.seed == "mean" else None


def _cell(row: MetricRow, key: str) -> str:
    """What a table shows for one field: short backbone names, seed means with their spread."""
    value = getattr(row, key)
    if key == "backbone":
        return backbone_label(value)
    std = _std(row, key) if key in SCORES else None
    if _missing(value) or _missing(std):
        return _fmt(value)
    return f"{value:.1f} ± {std:.1f}"


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


def protocol_notes(rows: Sequence[MetricRow]) -> list[str]:
    """A note when student rows of several protocols share the report: they are never averaged
    together (:func:`kdpipe.eval.metrics.mean_rows` keeps one mean per protocol)."""
    protocols = sorted({r.protocol for r in rows if r.role == "student" and r.protocol})
    if len(protocols) < 2:
        return []
    return [f"student rows of different protocols ({', '.join(protocols)}) are kept apart: each protocol has its own "
            "rows and its own seed mean, never one mean over both; compare them side by side"]


def _flagged(flags: Sequence[tuple[MetricRow, SpreadFlag]]) -> dict[tuple, str]:
    """Row identity -> the score column whose cell gets :data:`SPREAD_MARK`."""
    return {row_identity(r): f.score for r, f in flags}


def markdown_table(rows: Sequence[MetricRow], notes: Sequence[str] = (), flags: Sequence[tuple[MetricRow, SpreadFlag]] = ()) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    marked = _flagged(flags)
    for r in sort_rows(rows):
        cells = [_cell(r, c) for c in COLUMNS]
        if r.seed == "mean":
            cells = [f"**{c}**" for c in cells]
            if row_identity(r) in marked:
                i = COLUMNS.index(marked[row_identity(r)])
                cells[i] += SPREAD_MARK
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    notes = [*notes, *(n for n in protocol_notes(rows) if n not in notes), *(f"{SPREAD_MARK} {f.note()}" for _, f in flags)]
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


TRANSFER_HEADER = (
    "Cross-dataset / domain-generalisation layout: accuracy in percent over all classes of each "
    "dataset. `source` is the dataset teacher and baselines learned from; `average` is the mean over "
    "the target columns, the source left out, as the papers report it.\n\n"
)


def transfer_table(rows: Sequence[MetricRow], source: str, flags: Sequence[tuple[MetricRow, SpreadFlag]] = ()) -> str:
    """The papers' transfer table: one line per method, a ``source`` column, one column per
    target dataset and their average. Per dataset the seed means when it has any, else its one
    seed's rows (run dirs of different seed counts can share the table); ``seed`` says which."""
    rows = list(rows)
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    targets = [d for d in datasets if d != source]
    with_means = {r.dataset for r in rows if r.seed == "mean"}
    shown = [r for r in rows if (r.seed == "mean") == (r.dataset in with_means)]
    by, seeds = {}, {}
    for r in shown:
        key = (r.role, r.method, r.backbone, r.protocol)
        by.setdefault(key, {})[r.dataset] = r
        seeds.setdefault(key, {})[str(r.seed)] = None
    order = {key: i for i, key in enumerate(by)}
    marked = _flagged(flags)
    lines = ["| method | role | backbone | protocol | seed | source: " + " | ".join([source, *targets]) + " | average |",
             "|" + "|".join("---" for _ in range(7 + len(targets))) + "|"]
    for key in sorted(by, key=lambda k: (ROLE_ORDER.get(k[0], 9), order[k])):
        role, method, backbone, protocol = key
        cells = [method, role, backbone_label(backbone), protocol or "-", "/".join(seeds[key])]
        cells += [_cell(by[key][d], "accuracy") + (SPREAD_MARK if row_identity(by[key][d]) in marked else "") if d in by[key] else "-"
                  for d in [source, *targets]]
        accs = [by[key][d].accuracy if d in by[key] else None for d in targets]
        cells.append(_fmt(sum(accs) / len(accs)) if accs and not any(_missing(a) for a in accs) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if source not in datasets:
        text += (f"\n- the source {source} was not scored in this run (the student was distilled on a target's images); "
                 f"`--set 'evaluate.targets=[\"{source}\"]'` scores every method on it too\n")
    return text


def csv_table(rows: Sequence[MetricRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in sort_rows(rows):
        d = {**r.to_dict(), "backbone": backbone_label(r.backbone), **{f"{k}_std": _std(r, k) for k in SCORES}}
        w.writerow(["" if d[c] is None else (round(d[c], 4) if isinstance(d[c], float) else d[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def write_tables(
    rows: Sequence[MetricRow], out_dir: str | Path, title: str = "Results", notes: Sequence[str] = (), images: Sequence[str] = (),
    transfer_source: str | None = None, flags: Sequence[tuple[MetricRow, SpreadFlag]] = (),
) -> dict[str, Path]:
    """``results.md`` (with ``images``, file names beside it, shown under the table) and ``results.csv``.

    ``transfer_source`` (cross-dataset mode): the transfer table of :func:`transfer_table` comes
    first, the full table of every row after it. ``flags``: :func:`spread_flags` of ``rows``."""
    out_dir = Path(out_dir)
    md = f"# {title}\n\n"
    if transfer_source:
        md += "## Transfer\n\n" + TRANSFER_HEADER + transfer_table(rows, transfer_source, flags) + "\n## Every row\n\n"
    md += HEADER + markdown_table(rows, notes, flags)
    if images:
        md += "\n" + "\n".join(f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in images) + "\n"
    return {
        "markdown": write_text(out_dir / "results.md", md),
        "csv": write_text(out_dir / "results.csv", csv_table(rows)),
    }


def write_results(rows: Sequence[MetricRow], out_dir: str | Path, title: str, notes: Sequence[str] = (), images: Sequence[str] = (),
                  transfer_source: str | None = None, facts: dict | None = None) -> dict[str, Path]:
    """``results.md``, ``results.csv`` and ``metrics.json`` (``facts`` added to its keys): what the
    report stage and ``kdpipe report RUN_DIR...`` write. Orderings within seed noise are flagged
    in both (:mod:`kdpipe.eval.seed_spread`)."""
    flags = spread_flags(rows)
    files = write_tables(rows, out_dir, title=title, notes=notes, images=images, transfer_source=transfer_source, flags=flags)
    files["metrics"] = write_json(Path(out_dir) / METRICS, {
        "title": title, **(facts or {}), "rows": [r.to_dict() for r in rows], "notes": list(notes),
        "seed_spread_flags": [f.to_dict() for _, f in flags],
    })
    return files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def draw_base_novel(ax, rows: Sequence[MetricRow], title: str = "") -> None:
    """Grouped bars of base, novel and HM per method (mean rows, with the seeds' standard deviation
    as error bars, when there are several seeds); bars of all-class accuracy when there is no
    base/novel split (cross-dataset)."""
    rows = sort_rows(rows)
    means = [r for r in rows if r.seed == "mean"]
    shown = means or rows
    # one group of bars per method and protocol: an inductive and a transductive student are two bars
    entries = list(dict.fromkeys((r.role, r.method, r.backbone, r.protocol) for r in shown))
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    by = {((r.role, r.method, r.backbone, r.protocol), r.dataset): r for r in shown}
    labels = [(f"{m}\n({role})" if role != "baseline" else m) + (f"\n{p}" if p else "") for role, m, _, p in entries]
    if any(r.base is not None for r in shown):
        series = [(k, k.upper() if k == "hm" else k, c, datasets[0]) for k, c in (("base", "#4c72b0"), ("novel", "#dd8452"), ("hm", "#55a868"))]
    else:  # cross-dataset: all-class accuracy, one bar per evaluated dataset
        palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
        series = [("accuracy", d if len(datasets) > 1 else "accuracy", palette[i % len(palette)], d) for i, d in enumerate(datasets)]
    width = 0.8 / len(series)
    for i, (key, name, colour, dataset) in enumerate(series):
        cells = [by.get((e, dataset)) for e in entries]
        values = [getattr(r, key) if r is not None and getattr(r, key) is not None else 0.0 for r in cells]
        stds = [(_std(r, key) or 0.0) if r is not None else 0.0 for r in cells]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(entries))]
        bars = ax.bar(xs, values, width, yerr=stds if any(stds) else None, capsize=2, error_kw={"elinewidth": 0.8},
                      label=name, color=colour)
        if any(stds):  # inside the bar: on its top the number would sit on the error bar
            ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", color="white")
        else:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(entries)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title or ("base / novel / HM per method" if series[0][0] != "accuracy" else "accuracy per method"))
    if means and any(_std(r, k) for r in means for k, *_ in series):
        ax.set_xlabel(f"mean of {len(means[0].extra.get('seeds', []))} seeds; error bars: ± standard deviation over seeds", fontsize=8)


def plot_base_novel(rows: Sequence[MetricRow], path: str | Path, title: str = "") -> Path:
    """:func:`draw_base_novel` as a PNG, the legend below the plot where it covers no bar."""
    plt = _pyplot()
    groups = len({(r.method, r.role, r.protocol) for r in rows}) * max(1.0, len({r.dataset for r in rows}) / 3)  # bars per group
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * groups + 2), 4), layout="constrained")
    draw_base_novel(ax, rows, title)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=8, ncols=len(names))
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def _held_out_count(curves: dict[str, list[dict]]) -> str:
    """``n = 23`` (``n = 20-23`` when seeds held out different numbers) for the agreement title."""
    counts = sorted({p["images"] for pts in curves.values() for p in pts if p.get("agreement") is not None and p.get("images")})
    if not counts:
        return "held-out images (count not recorded)"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"n = {n} held-out images"


def draw_curves(fig, curves: dict[str, list[dict]], title: str = "") -> tuple:
    """Distillation loss (left) and student-teacher agreement (right) per epoch on ``fig``, one colour
    per seed, solid for training and dashed for the held-out slice; returns the two Axes.

    ``curves`` maps a label (e.g. ``seed 1``) to a list of ``{"epoch", "kd_loss", "agreement",
    "images"}`` (``agreement`` a fraction, ``images`` the held-out count); epoch 0 is the untrained
    student. The legend goes below both plots: with a few seeds it would cover the curves.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from matplotlib import rcParams

    fig.set_layout_engine("constrained")  # keeps the suptitle off the subplot titles
    ax_loss, ax_agree = fig.subplots(1, 2)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    seeds = []
    for k, (label, points) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        pts = sorted(points, key=lambda p: p["epoch"])
        loss = [(p["epoch"], p["train_loss"]) for p in pts if p.get("train_loss") is not None]
        held = [(p["epoch"], p["kd_loss"]) for p in pts if p.get("kd_loss") is not None]
        agree = [(p["epoch"], 100.0 * p["agreement"]) for p in pts if p.get("agreement") is not None]
        if loss:
            ax_loss.plot(*zip(*loss), color=colour, marker="o", ms=3)
        if held:
            ax_loss.plot(*zip(*held), color=colour, marker="x", ms=3, ls="--")
        if agree:
            ax_agree.plot(*zip(*agree), color=colour, marker="x", ms=3, ls="--")
        if loss or held or agree:
            seeds.append(Line2D([], [], color=colour, lw=2, label=label))
    for ax in (ax_loss, ax_agree):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel("KD loss")
    ax_loss.set_title("distillation loss")
    ax_agree.set_ylabel("top-1 agreement (%)")
    ax_agree.set_title(f"student-teacher agreement\non {_held_out_count(curves)}", fontsize="medium")
    ax_agree.set_ylim(0, 102)
    if seeds:
        styles = [Line2D([], [], color="grey", marker="o", ms=3, label="train"),
                  Line2D([], [], color="grey", marker="x", ms=3, ls="--", label="held-out")]
        fig.legend(handles=seeds + styles, loc="outside lower center", fontsize=8, ncols=len(seeds) + 2)
    if title:
        fig.suptitle(title)
    return ax_loss, ax_agree


def plot_curves(curves: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """:func:`draw_curves` as a PNG."""
    plt = _pyplot()
    fig = plt.figure(figsize=(9, 4))
    draw_curves(fig, curves, title)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
