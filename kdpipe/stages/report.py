"""Stage ``report``: every seed's rows plus their mean as Markdown and CSV tables, ``metrics.json``,
a bar chart of base / novel / HM per method and the distillation loss and agreement curves.

Mean rows average base and novel over seeds and take the HM of those averages, as the papers do.
"""

from __future__ import annotations

from kdpipe.dist import leader_only
from kdpipe.io import read_json, write_json
from kdpipe.pipeline import register_stage

BARS = "base_novel_hm.png"
CURVES = "distill_curves.png"


def _write_report(ctx) -> dict:
    from kdpipe.eval.metrics import mean_rows
    from kdpipe.report import plot_base_novel, plot_curves, write_tables
    from kdpipe.stages.distill import CURVES as CURVES_JSON
    from kdpipe.stages.evaluate import read_rows

    cfg = ctx.cfg
    rows, notes = [], []
    for folder in sorted(set(ctx.inputs_of("evaluate").values())):
        seed_rows, seed_notes = read_rows(folder)
        rows += seed_rows
        notes += [n for n in seed_notes if n not in notes]
    rows.sort(key=lambda r: r.seed)
    seeds = {r.seed for r in rows}
    # a mean over one seed would only repeat its rows
    means = mean_rows(rows) if len(seeds) > 1 else []
    everything = rows + means

    curves = {}
    for folder in sorted(set(ctx.inputs_of("distill").values())):
        data = read_json(folder / CURVES_JSON)
        curves[f"seed {data['seed']}"] = data["curve"]

    summary = means or rows
    student = next((r for r in summary if r.role == "student"), None)
    teacher = next((r for r in summary if r.role == "teacher"), None)
    title = cfg["report"].title or (
        f"{student.dataset}: {teacher.method} on {teacher.backbone} -> promptkd on {student.backbone}" if student and teacher else "kdpipe results"
    )
    write_tables(everything, ctx.dir, title=title, notes=notes, images=[BARS, CURVES])
    write_json(ctx.dir / "metrics.json", {"title": title, "rows": [r.to_dict() for r in everything], "notes": notes})
    plot_base_novel(everything, ctx.dir / BARS, title=title)
    plot_curves(curves, ctx.dir / CURVES, title="distillation")
    ctx.log.info(f"wrote {ctx.dir / 'results.md'}")
    # headline: the student's HM (base-to-novel) or all-class accuracy (cross-dataset), seed mean
    out = {"seeds": len(seeds)}
    if student is not None:
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
    description="tables and plots of every method and seed",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _write_report(ctx))
