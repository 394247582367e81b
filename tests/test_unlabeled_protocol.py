"""``shards.unlabeled = all | base | <your shards>``: the inductive set holds no novel-class image,
each set records its protocol, and the report labels every student row with it and never puts
an inductive and a transductive row in one mean."""

from __future__ import annotations

import json

from test_pipeline_fakedata import COLOURS, make_fake_dtd, make_fake_pets


def _run_shards(tmp_path, *sets, dataset="oxford_pets"):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    args = ["run", "shards", "--run-dir", str(tmp_path / "run"), "--dataset", dataset, "--data-root", str(tmp_path / "data")]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def _written_paths(stage_dir):
    """The source path of every sample in the written train and holdout shards."""
    from kdpipe.data.shards.tarread import iter_samples

    paths = []
    for tar in sorted(stage_dir.glob("*/*.tar")):
        for sample in iter_samples(str(tar), lambda *problem: None):
            paths.append(json.loads(sample["json"])["path"])
    return paths


def test_base_unlabeled_shards_hold_no_novel_class_image(tmp_path):
    from kdpipe.data import load_dataset

    make_fake_pets(tmp_path / "data")
    result = _run_shards(tmp_path, "shards.unlabeled=base", "shards.holdout=4", "shards.holdout_fraction=0.2")
    assert result.exit_code == 0, result.output
    label_of = {it.path: it.label for it in load_dataset("oxford_pets", tmp_path / "data").train}
    stage = tmp_path / "run" / "shards"
    written = _written_paths(stage)
    num_base = (len(COLOURS) + 1) // 2
    # every base-class train image, train and holdout together, and not one novel-class image
    assert sorted(written) == sorted(p for p, y in label_of.items() if y < num_base)
    assert {label_of[p] for p in written} == set(range(num_base))
    assert len(list((stage / "holdout").glob("*.tar"))) == 1  # the held-out slice was checked too
    info = json.loads((stage / "shards.json").read_text())
    assert info["protocol"] == "inductive" and not info["transductive"] and info["images"] == 12 * num_base - 4
    assert "3 base classes" in info["source"] and "no novel-class image" in info["source"]


def test_all_is_the_transductive_default(tmp_path):
    from kdpipe.data import load_dataset

    make_fake_pets(tmp_path / "data")
    assert _run_shards(tmp_path, "shards.holdout=4").exit_code == 0
    info = json.loads((tmp_path / "run" / "shards" / "shards.json").read_text())
    assert info["protocol"] == "transductive" and info["transductive"]
    labels = {it.path: it.label for it in load_dataset("oxford_pets", tmp_path / "data").train}
    assert {labels[p] for p in _written_paths(tmp_path / "run" / "shards")} == set(range(len(COLOURS)))


def test_base_in_cross_mode_distils_on_the_source_only(tmp_path):
    from kdpipe.data import load_dataset

    make_fake_dtd(make_fake_pets(tmp_path / "data"))
    result = _run_shards(tmp_path, "shards.unlabeled=base", "data.mode=cross", "data.source=oxford_pets",
                         "shards.holdout=4", "shards.holdout_fraction=0.2", dataset="dtd")
    assert result.exit_code == 0, result.output
    pets = {it.path for it in load_dataset("oxford_pets", tmp_path / "data").train}
    assert set(_written_paths(tmp_path / "run" / "shards")) == pets  # no image of the dtd target
    assert json.loads((tmp_path / "run" / "shards" / "shards.json").read_text())["protocol"] == "inductive"


def test_user_shards_record_that_their_protocol_is_unknown(tmp_path):
    from kdpipe.data import load_dataset
    from kdpipe.data.shards import write_shards

    make_fake_pets(tmp_path / "data")
    write_shards(load_dataset("oxford_pets", tmp_path / "data").train, tmp_path / "mine", per_shard=40, keep_labels=False)
    assert _run_shards(tmp_path, f"shards.unlabeled={tmp_path / 'mine'}", "shards.holdout=4").exit_code == 0
    assert json.loads((tmp_path / "run" / "shards" / "shards.json").read_text())["protocol"] == "user shards"


def _student(seed, base, novel, protocol):
    from kdpipe.eval.metrics import MetricRow, harmonic_mean

    return MetricRow("promptkd", "student", "world-b", "pets", seed, base, novel, harmonic_mean(base, novel), protocol=protocol)


def test_inductive_and_transductive_rows_never_share_a_mean():
    from kdpipe.eval.metrics import mean_rows

    rows = [_student(1, 80.0, 60.0, "transductive"), _student(2, 90.0, 70.0, "transductive"),
            _student(1, 70.0, 40.0, "inductive"), _student(2, 72.0, 44.0, "inductive")]
    means = {r.protocol: r for r in mean_rows(rows)}
    assert set(means) == {"transductive", "inductive"}
    assert (means["transductive"].base, means["transductive"].novel) == (85.0, 65.0)
    assert (means["inductive"].base, means["inductive"].novel) == (71.0, 42.0)
    assert means["inductive"].extra["seeds"] == [1, 2]


def test_tables_and_bars_name_each_student_rows_protocol(tmp_path):
    import csv

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from kdpipe.eval.metrics import MetricRow, mean_rows
    from kdpipe.report import draw_base_novel, write_tables

    rows = [MetricRow("promptsrc", "teacher", "world-l", "pets", 1, 90.0, 80.0, 84.7),
            _student(1, 80.0, 60.0, "transductive"), _student(1, 78.0, 50.0, "inductive")]
    files = write_tables(rows, tmp_path)
    md = files["markdown"].read_text()
    lines = [line for line in md.splitlines() if line.startswith("| promptkd |")]
    assert [line.rstrip(" |").rsplit("| ", 1)[1] for line in lines] == ["transductive", "inductive"]
    assert next(line for line in md.splitlines() if line.startswith("| promptsrc |")).endswith("| - |")
    assert "kept apart" in md and "never one mean over both" in md
    with open(files["csv"]) as f:
        assert [r["protocol"] for r in csv.DictReader(f)] == ["", "transductive", "inductive"]
    fig, ax = plt.subplots()
    try:
        draw_base_novel(ax, rows + mean_rows(rows))
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["promptsrc\n(teacher)", "promptkd\n(student)\ntransductive", "promptkd\n(student)\ninductive"]
    finally:
        plt.close(fig)
