"""Metrics arithmetic (base/novel split, HM, seed means) and the report files."""

import csv

import pytest
import torch

from kdpipe.eval.metrics import MetricRow, base_count, harmonic_mean, mean_rows, split_accuracy
from kdpipe.report import markdown_table, plot_base_novel, plot_curves, write_tables


def test_base_count_is_ceil_half():
    assert [base_count(c) for c in (1, 2, 5, 10, 37)] == [1, 1, 3, 5, 19]


def test_split_accuracy_scores_each_split_within_its_classes():
    # 5 classes: base = 0,1,2; novel = 3,4
    logits = torch.tensor(
        [
            [9.0, 1.0, 0.0, 0.0, 0.0],  # label 0 -> right
            [0.0, 1.0, 5.0, 0.0, 9.0],  # label 2 -> right within base (9 on a novel column ignored)
            [5.0, 1.0, 0.0, 0.0, 0.0],  # label 1 -> wrong
            [9.0, 0.0, 0.0, 2.0, 1.0],  # label 3 -> right within novel (base column ignored)
            [0.0, 0.0, 0.0, 2.0, 1.0],  # label 4 -> wrong
        ]
    )
    labels = torch.tensor([0, 2, 1, 3, 4])
    m = split_accuracy(logits, labels)
    assert m["base"] == pytest.approx(200 / 3)
    assert m["novel"] == pytest.approx(50.0)
    assert m["hm"] == pytest.approx(2 * (200 / 3) * 50 / (200 / 3 + 50))
    assert m["accuracy"] == pytest.approx(20.0)  # over all 5 columns only row 0 is right


def test_mean_rows_take_hm_of_averaged_base_and_novel():
    rows = [
        MetricRow("promptkd", "student", "b", "pets", 1, 80.0, 60.0, harmonic_mean(80.0, 60.0)),
        MetricRow("promptkd", "student", "b", "pets", 2, 90.0, 40.0, harmonic_mean(90.0, 40.0)),
        MetricRow("coop", "baseline", "b", "pets", 1, 70.0, 50.0, harmonic_mean(70.0, 50.0)),
    ]
    means = {r.method: r for r in mean_rows(rows)}
    kd = means["promptkd"]
    assert kd.seed == "mean" and kd.base == pytest.approx(85.0) and kd.novel == pytest.approx(50.0)
    assert kd.hm == pytest.approx(2 * 85 * 50 / 135)
    assert kd.hm != pytest.approx((rows[0].hm + rows[1].hm) / 2)
    assert kd.extra["seeds"] == [1, 2] and kd.extra["base_std"] == pytest.approx(5.0)
    assert means["coop"].base == 70.0


def test_tables_and_plots_are_written(tmp_path):
    rows = [
        MetricRow("promptsrc", "teacher", "t", "pets", 1, 90.0, 70.0, harmonic_mean(90.0, 70.0)),
        MetricRow("promptkd", "student", "s", "pets", 1, 85.0, 65.0, harmonic_mean(85.0, 65.0)),
        MetricRow("zeroshot", "baseline", "s", "pets", 1, 60.0, 62.0, harmonic_mean(60.0, 62.0)),
    ]
    rows += mean_rows(rows)
    files = write_tables(rows, tmp_path, notes=["student saw unlabeled images of all classes"])
    md = files["markdown"].read_text()
    assert "| promptkd | student | s | pets | 1 | 85.0 | 65.0 | 73.7 |" in md  # percent, one decimal
    assert "unlabeled images of all classes" in md
    with open(files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table][:2] == ["promptsrc", "promptsrc"]  # teacher first, mean after seed
    assert len(table) == 6 and table[1]["seed"] == "mean"
    bars = plot_base_novel(rows, tmp_path / "bars.png")
    curves = plot_curves(
        {"seed 1": [{"epoch": 0, "agreement": 0.2, "kd_loss": 3.0}, {"epoch": 1, "agreement": 0.6, "kd_loss": 1.0, "train_loss": 1.5}]},
        tmp_path / "curves.png",
    )
    for png in (bars, curves):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(tmp_path.glob(".*tmp*"))


def test_markdown_bolds_mean_rows():
    rows = [MetricRow("coop", "baseline", "s", "d", 1, 50.0, None, None)]
    rows += mean_rows(rows)
    assert "| **coop** |" in markdown_table(rows) and "| - |" in markdown_table(rows)
