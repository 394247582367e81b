"""One report over several run dirs: the papers' cross-dataset table, one column per run's dataset.

PromptKD's cross-dataset table distils one student per target (on that target's unlabeled
images) from a teacher trained on the source, so its ten target columns come from ten run dirs.
This reads each run dir's finished report (``report/metrics.json``, done when its manifest is
there), checks that the runs can share a table (same evaluation mode, split and source), takes
each dataset's rows from one run and writes the tables with :func:`kdpipe.report.write_results`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kdpipe.errors import KdpipeError
from kdpipe.eval.metrics import MetricRow
from kdpipe.io import read_json_or_none
from kdpipe.pipeline.manifest import read_manifest
from kdpipe.report import METRICS

REPORT_FOLDER = "report"  # the report stage's folder in a run dir (kdpipe/stages/report.py)
# what runs in one table must share, and how a message names it
SHARED = {"mode": "evaluation mode (data.mode)", "split": "evaluated split (evaluate.split)", "source": "source dataset"}


@dataclass
class RunReport:
    run_dir: Path
    facts: dict  # mode, split, source, dataset (the run's own)
    rows: list[MetricRow]
    notes: list[str]


def read_run_report(run_dir: str | Path) -> RunReport:
    """The finished report of ``run_dir``, or one line saying why there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdpipeError(f"run dir {run_dir} does not exist")
    folder = run_dir / REPORT_FOLDER
    data = read_json_or_none(folder / METRICS) if read_manifest(folder) is not None else None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise KdpipeError(f"{run_dir} has no finished report ({folder}/manifest.json missing); run `kdpipe run report --run-dir {run_dir}` first")
    if data.get("mode") is None:
        raise KdpipeError(f"{folder / METRICS} was written before reports recorded their evaluation mode; "
                          f"`kdpipe run report --run-dir {run_dir}` refreshes it")
    try:
        rows = [MetricRow(**r) for r in data["rows"]]
    except TypeError as e:
        raise KdpipeError(f"{folder / METRICS}: rows this kdpipe cannot read ({e})") from None
    facts = {k: data.get(k) for k in (*SHARED, "dataset")}
    return RunReport(run_dir, facts, rows, list(data.get("notes", [])))


def combine(reports: Sequence[RunReport]) -> tuple[list[MetricRow], list[str], dict]:
    """The rows of one table over ``reports``: (rows, notes, facts for metrics.json).

    Each dataset's rows come from one run: the run whose own dataset it is (its student was
    distilled for it), else the one run that scored it as an extra target; two runs that both
    own a dataset, or both only score it, are refused (the table would show one of them silently).
    """
    if not reports:
        raise KdpipeError("kdpipe report needs at least one run dir")
    seen = {}
    for rep in reports:
        key = rep.run_dir.resolve()
        if key in seen:
            raise KdpipeError(f"run dir {rep.run_dir} is given twice")
        seen[key] = rep
    first = reports[0]
    for rep in reports[1:]:
        for key, what in SHARED.items():
            if key == "source" and first.facts["mode"] != "cross":
                continue  # base-to-novel runs each learn from their own dataset
            if rep.facts[key] != first.facts[key]:
                raise KdpipeError(f"{first.run_dir} and {rep.run_dir} differ in {what}: {first.facts[key]} vs {rep.facts[key]}; "
                                  "one table holds runs evaluated the same way")
    owner: dict[str, RunReport] = {}
    for rep in reports:
        own = rep.facts.get("dataset")
        if own in owner:
            raise KdpipeError(f"{owner[own].run_dir} and {rep.run_dir} are both runs on {own}; give one run per dataset")
        owner[own] = rep
    scorers: dict[str, list[RunReport]] = {}
    for rep in reports:
        for d in dict.fromkeys(r.dataset for r in rep.rows):
            scorers.setdefault(d, []).append(rep)
    rows, notes = [], []
    for dataset, reps in scorers.items():
        chosen = owner.get(dataset)
        if chosen is None:
            if len(reps) > 1:
                raise KdpipeError(f"{reps[0].run_dir} and {reps[1].run_dir} both score {dataset} as an extra target and neither "
                                  f"is a run on it; add a run on {dataset}, or give only one of them")
            chosen = reps[0]
        rows += [r for r in chosen.rows if r.dataset == dataset]
    for rep in reports:
        notes += [n for n in rep.notes if n not in notes]
    facts = {**{k: first.facts[k] for k in SHARED},
             "runs": [{"run_dir": str(rep.run_dir), "dataset": rep.facts.get("dataset")} for rep in reports]}
    return rows, notes, facts
