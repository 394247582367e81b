"""How the report reads: short backbone names, seed spread, error bars, sample counts, one unit."""

import json
from types import SimpleNamespace

import pytest

from kdpipe.eval.labels import backbone_label
from kdpipe.eval.metrics import MetricRow, harmonic_mean, mean_rows
from kdpipe.stage_graph import stage_graph
from kdpipe.pipeline.plan import headline
from kdpipe.report import draw_base_novel, draw_curves, markdown_table


@pytest.mark.parametrize(
    "spec, label",
    [
        ("/tmp/run/world/world-l.safetensors", "world-l"),
        ("ViT-B-16-quickgelu:/weights/openai.pt", "ViT-B-16-quickgelu"),
        ("local-dir:/models/my-clip/", "my-clip"),
        ("vit-b-16", "vit-b-16"),
        ("ViT-B-16:openai", "ViT-B-16:openai"),
        ("hf-hub:org/repo", "hf-hub:org/repo"),
    ],
)
def test_backbone_label_drops_local_paths(spec, label):
    assert backbone_label(spec) == label


SEEDS = (1, 2, 3)
STUDENT_BASE = {1: 80.0, 2: 85.0, 3: 90.0}  # mean 85.0, population std 4.08
HELD_OUT = 23


def _row(method, role, backbone, seed, base, novel):
    return MetricRow(method, role, backbone, "pets", seed, base, novel, harmonic_mean(base, novel), accuracy=(base + novel) / 2)


@pytest.fixture
def report_dir(tmp_path):
    """The report stage run on made-up evaluate and distill outputs of three seeds, in a tmp run dir."""
    from kdpipe.stages.report import _write_report

    run = tmp_path / "run"
    teacher_bb, student_bb = str(run / "world" / "world-l.safetensors"), str(run / "world" / "world-b.safetensors")
    inputs = {}
    for s in SEEDS:
        ev, di = run / f"evaluate-seed{s}", run / f"distill-seed{s}"
        ev.mkdir(parents=True), di.mkdir(parents=True)
        rows = [_row("promptsrc", "teacher", teacher_bb, s, 90.0, 80.0), _row("promptkd", "student", student_bb, s, STUDENT_BASE[s], 70.0),
                _row("zeroshot", "baseline", student_bb, s, 50.0 + s, 40.0)]
        (ev / "metrics.json").write_text(json.dumps({"rows": [r.to_dict() for r in rows], "notes": []}))
        curve = [{"epoch": e, "agreement": 0.1 * (e + s), "kd_loss": 2.0 - e, "images": HELD_OUT} for e in range(3)]
        (di / "curves.json").write_text(json.dumps({"seed": s, "curve": curve, "history": []}))
        inputs[f"evaluate@seed{s}"], inputs[f"distill@seed{s}"] = ev, di
    out = run / "report"
    out.mkdir()
    ctx = SimpleNamespace(
        cfg={"report": SimpleNamespace(title="")}, dir=out, log=SimpleNamespace(info=lambda msg: None),
        inputs_of=lambda stage: {n: p for n, p in inputs.items() if n.split("@")[0] == stage},
    )
    metrics = _write_report(ctx)
    return SimpleNamespace(dir=out, run=run, metrics=metrics)


def test_report_titles_and_tables_name_backbones_without_paths(report_dir):
    md = (report_dir.dir / "results.md").read_text()
    csv_text = (report_dir.dir / "results.csv").read_text()
    title = json.loads((report_dir.dir / "metrics.json").read_text())["title"]
    for text in (md, csv_text, title):
        assert str(report_dir.run) not in text and ".safetensors" not in text
    assert "promptsrc on world-l -> promptkd on world-b" in title
    assert "| promptkd | student | world-b | pets | 1 |" in md


def test_seed_means_carry_std_and_accuracy_column_is_explained(report_dir):
    md = (report_dir.dir / "results.md").read_text()
    mean_line = next(line for line in md.splitlines() if line.startswith("| **promptkd**"))
    assert "85.0 ± 4.1" in mean_line  # base over seeds 80, 85, 90
    assert "70.0 ± 0.0" in mean_line
    assert "base ∪ novel" in md and "standard deviation" in md


def test_report_cells_are_percentages_with_one_decimal(report_dir):
    md = (report_dir.dir / "results.md").read_text()
    seed_line = next(line for line in md.splitlines() if line.startswith("| promptkd | student | world-b | pets | 1 |"))
    assert seed_line.split(" | ")[5:8] == ["80.0", "70.0", "74.7"]
    assert "percent" in md.split("|")[0]


def _axes():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def test_bar_chart_draws_error_bars_of_seed_std():
    plt = _axes()
    rows = [_row("promptkd", "student", "s", s, STUDENT_BASE[s], 70.0) for s in SEEDS]
    rows += mean_rows(rows)
    fig, ax = plt.subplots()
    try:
        draw_base_novel(ax, rows)
        from matplotlib.container import BarContainer

        base_bars = next(c for c in ax.containers if isinstance(c, BarContainer))
        assert base_bars.errorbar is not None
        (segments,) = [c for c in base_bars.errorbar.lines[2]]
        (bottom, top), = [(seg[0][1], seg[1][1]) for seg in segments.get_segments()]
        assert top - bottom == pytest.approx(2 * rows[-1].extra["base_std"])
    finally:
        plt.close(fig)


def _curves(seeds, images=HELD_OUT):
    return {f"seed {s}": [{"epoch": e, "agreement": 0.2 * e, "kd_loss": 3.0 - e, "train_loss": 3.5 - e, "images": images}
                          for e in range(4)] for s in seeds}


def test_curves_keep_legend_and_suptitle_clear_of_the_plots():
    plt = _axes()
    fig = plt.figure(figsize=(9, 3.5))
    try:
        ax_loss, ax_agree = draw_curves(fig, _curves(SEEDS), title="distillation")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert ax_loss.get_legend() is None and ax_agree.get_legend() is None and fig.legends
        legend = fig.legends[0].get_window_extent(renderer)
        suptitle = fig._suptitle.get_window_extent(renderer)
        for ax in (ax_loss, ax_agree):
            assert not legend.overlaps(ax.get_window_extent(renderer))
            assert not suptitle.overlaps(ax.title.get_window_extent(renderer))
    finally:
        plt.close(fig)


def test_agreement_curve_names_its_sample_count():
    plt = _axes()
    fig = plt.figure()
    try:
        _, ax_agree = draw_curves(fig, _curves([1], images=2))
        assert "n = 2 held-out images" in ax_agree.get_title()
    finally:
        plt.close(fig)


def _stage_headline(stage: str, metrics: dict) -> str:
    import kdpipe.stages  # noqa: F401  (registers the stages)

    return headline(stage_graph().specs[stage], metrics)


def test_summary_lines_speak_percent_and_name_hm():
    assert _stage_headline("distill", {"agreement": 1.0, "agreement_start": 0.02}) == "agreement=100.0%"
    assert _stage_headline("report", {"seeds": 3, "student": 40.0, "score": "hm"}) == "student HM=40.0%"
    assert _stage_headline("evaluate", {"score": "accuracy", "student": 63.24, "teacher": 70.0}) == "student accuracy=63.2%"
    assert _stage_headline("shards", {"images": 120}) == "images=120"  # counts stay counts


def test_report_stage_says_what_its_student_score_is(report_dir):
    assert report_dir.metrics["score"] == "hm" and report_dir.metrics["student"] == pytest.approx(harmonic_mean(85.0, 70.0))


def test_markdown_table_formats_missing_std_as_plain_mean():
    rows = [_row("coop", "baseline", "s", 1, 50.0, 40.0)]
    rows += mean_rows(rows)  # one seed: no spread to show
    mean_line = markdown_table(rows).splitlines()[-1]
    assert "±" not in mean_line and "**50.0**" in mean_line
