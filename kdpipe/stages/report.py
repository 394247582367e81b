"""Stage ``report``: every seed's rows plus their mean as Markdown and CSV tables, ``metrics.json``,
a bar chart of base / novel / HM per method and the distillation loss and agreement curves.

Mean rows average base and novel over seeds and take the HM of those averages, as the papers do;
a student row says which protocol its unlabeled set followed (transductive / inductive / user
shards), and rows of different protocols never share a mean. In cross-dataset mode ``results.md``
opens with the papers' transfer table: source column, one column per target, their average.
"""

from __future__ import annotations

from kdpipe.artefacts.distill_curves import read_curves
from kdpipe.artefacts.evaluation import read_evaluation
from kdpipe.dist import leader_only
from kdpipe.pipeline import register_stage

BARS = "base_novel_hm.png"
CURVES = "distill_curves.png"


def _write_report(ctx) -> dict:
    from kdpipe.eval.labels import backbone_label
    from kdpipe.eval.metrics import MetricRow, mean_rows
    from kdpipe.report import plot_base_novel, plot_curves, write_results

    cfg = ctx.cfg
    rows, notes, facts = [], [], {}
    for folder in sorted(set(ctx.inputs_of("evaluate").values())):
        evaluated = read_evaluation(folder)
        seed_rows = [MetricRow(**r) for r in evaluated["rows"]]
        rows += seed_rows
        notes += [n for n in evaluated.get("notes", []) if n not in notes]
        # what `kdpipe report RUN_DIR...` checks before it puts several runs in one table
        facts = {"mode": evaluated.get("mode"), "split": evaluated.get("split"), "source": evaluated.get("source"),
                 "dataset": seed_rows[0].dataset if seed_rows else None}  # the run's own: evaluate scores it first
    # the papers' transfer layout in cross-dataset mode: source, targets, average
    transfer_source = (facts["source"] or facts["dataset"]) if facts.get("mode") == "cross" else None
    rows.sort(key=lambda r: r.seed)
    seeds = {r.seed for r in rows}
    # a mean over one seed would only repeat its rows
    means = mean_rows(rows) if len(seeds) > 1 else []
    everything = rows + means

    curves = {}
    for folder in sorted(set(ctx.inputs_of("distill").values())):
        data = read_curves(folder)
        curves[f"seed {data['seed']}"] = data["curve"]

    # the headline is the run's own dataset (the first each evaluate scored), not a transfer target
    summary = [r for r in (means or rows) if not rows or r.dataset == rows[0].dataset]
    student = next((r for r in summary if r.role == "student"), None)
    teacher = next((r for r in summary if r.role == "teacher"), None)
    # short backbone names: a local checkpoint's full path belongs in the manifests, not in titles
    title = cfg["report"].title or (
        f"{student.dataset}: {teacher.method} on {backbone_label(teacher.backbone)} -> promptkd on {backbone_label(student.backbone)}"
        if student and teacher else "kdpipe results"
    )
    write_results(everything, ctx.dir, title, notes, images=[BARS, CURVES], transfer_source=transfer_source, facts=facts)
    plot_base_novel(everything, ctx.dir / BARS, title=title)
    plot_curves(curves, ctx.dir / CURVES, title="distillation")
    ctx.log.info(f"wrote {ctx.dir / 'results.md'}")
    # headline: the student's HM (base-to-novel) or all-class accuracy (cross-dataset), seed mean,
    # in percent; ``score`` names which (kdpipe/stages/metric_formats.py prints it so)
    out = {"seeds": len(seeds)}
    if student is not None:
        out["score"] = "hm" if student.hm is not None else "accuracy"
        out.update(student=student.hm if student.hm is not None else student.accuracy,
                   student_base=student.base, student_novel=student.novel, student_accuracy=student.accuracy)
    if teacher is not None:
        out.update(teacher=teacher.hm if teacher.hm is not None else teacher.accuracy)
    return out


@register_stage(
    "report",
    reads=["report.title"],
    deps=["evaluate", "distill"],
    outputs=["results.md", "results.csv", "metrics.json", BARS, CURVES],
    headline="student",
    # 2: short backbone names, one decimal, ± seed std, error bars, legends outside;
    # 3: each student row's protocol, the transfer table in cross-dataset mode;
    # 4: orderings within seed noise flagged; mode / split / source in metrics.json
    version=4,
    description="tables and plots of every method and seed",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _write_report(ctx))
