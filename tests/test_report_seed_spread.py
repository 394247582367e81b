"""The report flags a seed mean whose lead over the next-ranked row is smaller than the seeds' std."""

from __future__ import annotations

import json

from kdpipe.eval.metrics import MetricRow, mean_rows
from kdpipe.eval.seed_spread import spread_flags
from kdpipe.report import SPREAD_MARK, write_results


def seeds(method, role, hms, dataset="pets", protocol=None):
    """Per-seed rows with base = novel = the given HM (so each seed's HM is exactly that value)."""
    return [MetricRow(method, role, "vit-b-16", dataset, s, v, v, v, v, protocol=protocol) for s, v in enumerate(hms, 1)]


def table_rows():
    rows = (seeds("promptsrc", "teacher", [90.0, 90.2, 89.8]) + seeds("promptkd", "student", [80.0, 84.0, 76.0], protocol="transductive")
            + seeds("coop", "baseline", [79.0, 79.2, 78.8]) + seeds("vpt", "baseline", [60.0, 60.0, 60.0]))
    return rows + mean_rows(rows)


def test_a_lead_within_the_seed_std_is_flagged_in_markdown_and_metrics(tmp_path):
    write_results(table_rows(), tmp_path, "t")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # student 80.0 (std 3.3) over coop 79.0 (std 0.2): a 1.0 lead inside the student's spread.
    # teacher over student (10) and coop over vpt (19) are real leads
    [flag] = metrics["seed_spread_flags"]
    assert flag["row"] == "promptkd (student, transductive)" and flag["over"] == "coop" and flag["score"] == "hm"
    assert abs(flag["gap"] - 1.0) < 1e-9 and abs(flag["std"] - 3.2660) < 1e-3 and flag["dataset"] == "pets"
    md = (tmp_path / "results.md").read_text()
    [student_line] = [ln for ln in md.splitlines() if ln.startswith("| **promptkd**")]
    assert f"80.0 ± 3.3**{SPREAD_MARK}" in student_line
    assert [ln for ln in md.splitlines() if SPREAD_MARK in ln and ln.startswith("|")] == [student_line]
    assert f"- {SPREAD_MARK} pets: promptkd (student, transductive) leads coop by 1.0 HM, less than the std over seeds (3.3)" in md


def test_the_larger_std_of_the_pair_counts_and_single_seeds_are_never_flagged():
    rows = seeds("coop", "baseline", [70.0, 70.0]) + seeds("vpt", "baseline", [69.0, 65.0])  # vpt 67.0 ± 2.0, gap 3
    assert spread_flags(rows + mean_rows(rows)) == []
    # vpt 69.0 ± 2.0, gap 1: coop has no spread, but the row it beats has
    rows = seeds("coop", "baseline", [70.0, 70.0]) + seeds("vpt", "baseline", [71.0, 67.0])
    [(row, flag)] = spread_flags(rows + mean_rows(rows))
    assert row.method == "coop" and flag.over == "vpt" and flag.std == 2.0 and flag.gap == 1.0
    one = seeds("coop", "baseline", [70.0]) + seeds("vpt", "baseline", [69.9])
    assert spread_flags(one + mean_rows(one)) == []


def test_cross_dataset_rows_are_ranked_per_dataset_on_accuracy(tmp_path):
    def acc(method, role, values, dataset):
        return [MetricRow(method, role, "vit-b-16", dataset, s, None, None, None, v) for s, v in enumerate(values, 1)]

    rows = acc("promptkd", "student", [50.0, 56.0], "dtd") + acc("coop", "baseline", [52.0, 52.0], "dtd")
    rows += acc("promptkd", "student", [70.0, 70.0], "eurosat") + acc("coop", "baseline", [60.0, 61.0], "eurosat")
    write_results(rows + mean_rows(rows), tmp_path, "t", transfer_source="imagenet")
    flags = json.loads((tmp_path / "metrics.json").read_text())["seed_spread_flags"]
    assert [(f["dataset"], f["row"], f["over"], f["score"]) for f in flags] == [("dtd", "promptkd (student)", "coop", "accuracy")]
    transfer = (tmp_path / "results.md").read_text().split("## Every row")[0]
    [student] = [ln for ln in transfer.splitlines() if ln.startswith("| promptkd")]
    assert f"53.0 ± 3.0{SPREAD_MARK}" in student and f"70.0 ± 0.0{SPREAD_MARK}" not in student
