"""``kdpipe report RUN_DIR... --out DIR``: one cross-dataset table over several run dirs (made up
here with the report's own writer), and one line for every input it cannot combine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.errors import KdpipeError
from kdpipe.eval.metrics import MetricRow, mean_rows
from kdpipe.pipeline.manifest import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, hash_outputs
from kdpipe.report import write_results


def rows_for(dataset, seeds, student, teacher, coop):
    """Teacher / student / coop rows of ``dataset`` for each seed (cross mode: accuracy only)."""
    out = []
    for i, seed in enumerate(seeds):
        out += [MetricRow("promptsrc", "teacher", "kd-tiny-t", dataset, seed, None, None, None, teacher[i]),
                MetricRow("promptkd", "student", "kd-tiny-s", dataset, seed, None, None, None, student[i], protocol="transductive"),
                MetricRow("coop", "baseline", "kd-tiny-s", dataset, seed, None, None, None, coop[i])]
    return out + (mean_rows(out) if len(seeds) > 1 else [])


def fake_run(root, name, dataset, rows, mode="cross", source="imagenet", split="test", finished=True):
    """A run dir holding only a finished report stage, written as the stage writes it."""
    folder = root / name / "report"
    write_results(rows, folder, name, notes=[f"note of {name}"], facts={"mode": mode, "split": split, "source": source, "dataset": dataset})
    if finished:
        (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
                                                   "fingerprint": "f", "outputs": hash_outputs(folder)}))
    return root / name


def invoke(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def cells_of(md, prefix):
    [line] = [ln for ln in md.split("## Every row")[0].splitlines() if ln.startswith(prefix)]
    return [c.strip() for c in line.strip("|").split("|")]


def test_one_table_over_runs_source_column_targets_and_their_average(tmp_path):
    # the dtd run (2 seeds) also scored the source; eurosat's run has one seed
    dtd = fake_run(tmp_path, "dtd", "dtd", rows_for("dtd", [1, 2], [50.0, 54.0], [60.0, 60.0], [40.0, 42.0])
                   + rows_for("imagenet", [1, 2], [70.0, 70.0], [80.0, 80.0], [66.0, 66.0]))
    eurosat = fake_run(tmp_path, "eurosat", "eurosat", rows_for("eurosat", [1], [30.0], [45.0], [35.0]))
    result = invoke(dtd, eurosat, "--out", tmp_path / "table")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    md = (tmp_path / "table" / "results.md").read_text()
    assert "| method | role | backbone | protocol | seed | source: imagenet | dtd | eurosat | average |" in md
    student = cells_of(md, "| promptkd | student |")
    assert student[3:] == ["transductive", "mean/1", "70.0 ± 0.0", "52.0 ± 2.0", "30.0", "41.0"]
    assert cells_of(md, "| coop |")[5:] == ["66.0 ± 0.0", "41.0 ± 1.0", "35.0", "38.0"]
    assert "- note of dtd" in md and "- note of eurosat" in md
    metrics = json.loads((tmp_path / "table" / "metrics.json").read_text())
    assert metrics["mode"] == "cross" and metrics["source"] == "imagenet"
    assert [r["dataset"] for r in metrics["runs"]] == ["dtd", "eurosat"]
    assert {(r["dataset"], r["seed"]) for r in metrics["rows"] if r["role"] == "student"} == {
        ("dtd", 1), ("dtd", 2), ("dtd", "mean"), ("imagenet", 1), ("imagenet", 2), ("imagenet", "mean"), ("eurosat", 1)}
    assert (tmp_path / "table" / "results.csv").read_text().startswith("method,role,backbone,dataset,seed")


def test_a_run_on_a_dataset_wins_over_a_run_scoring_it_as_an_extra_target(tmp_path):
    dtd = fake_run(tmp_path, "dtd", "dtd", rows_for("dtd", [1], [50.0], [60.0], [40.0]) + rows_for("eurosat", [1], [10.0], [11.0], [12.0]))
    eurosat = fake_run(tmp_path, "eurosat", "eurosat", rows_for("eurosat", [1], [30.0], [45.0], [35.0]))
    assert invoke(dtd, eurosat, "--out", tmp_path / "t").exit_code == 0
    assert cells_of((tmp_path / "t" / "results.md").read_text(), "| promptkd | student |")[6:] == ["50.0", "30.0", "40.0"]


def bad_inputs(tmp_path):
    one = rows_for("dtd", [1], [50.0], [60.0], [40.0])
    ok = fake_run(tmp_path, "ok", "dtd", one)
    return {
        "does not exist": [ok, tmp_path / "missing"],
        "has no finished report": [ok, fake_run(tmp_path, "unfinished", "eurosat", rows_for("eurosat", [1], [1.0], [1.0], [1.0]), finished=False)],
        "differ in evaluation mode": [ok, fake_run(tmp_path, "b2n", "pets", [MetricRow("coop", "baseline", "b", "pets", 1, 1.0, 2.0, 1.3)], mode="base2novel")],
        "differ in source dataset": [ok, fake_run(tmp_path, "src", "eurosat", rows_for("eurosat", [1], [1.0], [1.0], [1.0]), source="caltech101")],
        "differ in evaluated split": [ok, fake_run(tmp_path, "val", "eurosat", rows_for("eurosat", [1], [1.0], [1.0], [1.0]), split="val")],
        "are both runs on dtd": [ok, fake_run(tmp_path, "dtd2", "dtd", one)],
        "is given twice": [ok, ok],
        "both score eurosat as an extra target": [fake_run(tmp_path, "x1", "ucf101", rows_for("eurosat", [1], [1.0], [1.0], [1.0])),
                                                  fake_run(tmp_path, "x2", "sun397", rows_for("eurosat", [1], [2.0], [2.0], [2.0]))],
    }


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    for why, runs in bad_inputs(tmp_path).items():
        result = invoke(*runs, "--out", tmp_path / "out")
        assert isinstance(result.exception, KdpipeError), (why, result.output, result.exception)
        assert why in str(result.exception) and "\n" not in str(result.exception)
        assert not (tmp_path / "out").exists()


def test_the_command_line_says_why_and_exits_non_zero(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "kdpipe", "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: run dir {tmp_path / 'nothing'} does not exist"


def test_base_to_novel_runs_share_the_every_row_table(tmp_path):
    mode = "base2novel"
    pets = fake_run(tmp_path, "pets", "pets", [MetricRow("coop", "baseline", "b", "pets", 1, 80.0, 70.0, 74.7)], mode=mode, source="pets")
    dtd = fake_run(tmp_path, "dtd", "dtd", [MetricRow("coop", "baseline", "b", "dtd", 1, 60.0, 50.0, 54.5)], mode=mode, source="dtd")
    assert invoke(pets, dtd, "--out", tmp_path / "t").exit_code == 0
    md = (tmp_path / "t" / "results.md").read_text()
    assert "## Transfer" not in md and "| coop | baseline | b | pets | 1 | 80.0 | 70.0 | 74.7 |" in md and "| dtd | 1 | 60.0 |" in md
