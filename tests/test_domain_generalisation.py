"""Domain generalisation: the ``domain-generalisation`` recipe trains on ImageNet (teacher few-shot,
student distilled on its unlabeled train images) and scores every method on ImageNet-V2, -Sketch,
-A and -R in the CoOp folder layouts; the report opens with the papers' transfer table."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

# four ImageNet classes, each a colour; -A and -R hold subsets of them, as the real ones do
WNIDS = {"n01": ("tench", (220, 40, 40)), "n02": ("goldfish", (40, 200, 60)),
         "n03": ("great white shark", (40, 70, 220)), "n04": ("tiger shark", (230, 210, 40))}
A_WNIDS = ["n02", "n04"]
R_WNIDS = ["n01", "n02", "n03"]


def _image(path: Path, rgb, rng: random.Random, size: int = 40) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(60, 200) for _ in range(3)))
    x, y = rng.randrange(0, size // 4), rng.randrange(0, size // 4)
    img.paste(tuple(max(0, min(255, c + rng.randrange(-25, 26))) for c in rgb), (x, y, x + size // 2 + 4, y + size // 2 + 4))
    img.save(path)


def make_fake_imagenet_family(root: Path) -> Path:
    """ImageNet and its four variants in the CoOp/Dassl layouts. V2 and Sketch hold copies of the
    ImageNet val images (so a method must score them exactly as it scores ImageNet); -A and -R
    hold images of their class subsets."""
    rng = random.Random(0)
    classnames = "".join(f"{w} {name}\n" for w, (name, _) in WNIDS.items())
    inet = root / "imagenet"
    for label, (wnid, (_, rgb)) in enumerate(sorted(WNIDS.items())):
        for i in range(12):
            _image(inet / "images" / "train" / wnid / f"{wnid}_{i}.JPEG", rgb, rng)
        for i in range(4):
            val = inet / "images" / "val" / wnid / f"val_{wnid}_{i}.JPEG"
            _image(val, rgb, rng)
            for copy in (root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}.jpeg",
                         root / "imagenet-sketch" / "images" / wnid / f"sketch_{i}.JPEG"):
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(val, copy)
    for folder, sub, wnids in (("imagenet-adversarial", "imagenet-a", A_WNIDS), ("imagenet-rendition", "imagenet-r", R_WNIDS)):
        for wnid in wnids:
            for i in range(3):
                _image(root / folder / sub / wnid / f"{i}.jpg", WNIDS[wnid][1], rng)
    for folder in ("imagenet", "imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"):
        (root / folder / "classnames.txt").write_text(classnames)
    return root


def test_readers_see_the_variants_with_their_class_subsets(tmp_path):
    from kdpipe.data import load_dataset

    root = make_fake_imagenet_family(tmp_path)
    names = [WNIDS[w][0] for w in sorted(WNIDS)]
    assert load_dataset("imagenet", root).classnames == names
    for name, classes, images in (("imagenet_v2", names, 16), ("imagenet_sketch", names, 16),
                                  ("imagenet_a", [WNIDS[w][0] for w in A_WNIDS], 6), ("imagenet_r", [WNIDS[w][0] for w in R_WNIDS], 9)):
        ds = load_dataset(name, root)
        assert ds.classnames == classes and len(ds.test) == images and not ds.train
        assert {it.classname for it in ds.test} == set(classes) and all(ds.classnames[it.label] == it.classname for it in ds.test)


def test_domain_generalisation_recipe_scores_every_target_and_reports_the_transfer_table(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    root = make_fake_imagenet_family(tmp_path / "data")
    sets = {
        "data.shots": 2, "data.workers": 0, "teacher.promptsrc.epochs": 1, "baselines.methods": "zeroshot",
        "distill.epochs": 1, "distill.lr": 0.001, "distill.workers": 0, "shards.holdout_fraction": 0.2, "distill.allow_weak_teacher": True,
    }
    args = ["run", "all", "--recipe", "domain-generalisation", "--run-dir", str(tmp_path / "run"), "--teacher", "kd-tiny-t",
            "--student", "kd-tiny-s", "--data-root", str(root)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    run = tmp_path / "run"
    assert json.loads((run / "shards" / "shards.json").read_text())["protocol"] == "inductive"
    metrics = json.loads((run / "evaluate-seed1" / "metrics.json").read_text())
    targets = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert metrics["source"] == "imagenet" and metrics["targets"] == targets
    acc = {(r["role"], r["dataset"]): r for r in metrics["rows"]}
    assert set(acc) == {(role, d) for role in ("teacher", "student", "baseline") for d in ["imagenet", *targets]}
    for row in metrics["rows"]:
        assert row["hm"] is None and 0 <= row["accuracy"] <= 100
        assert row["protocol"] == ("inductive" if row["role"] == "student" else None)
    # V2 and Sketch hold ImageNet's val images: re-encoding the class names for a target gives
    # the very scores the stored class features give
    for role in ("teacher", "student", "baseline"):
        for copy in ("imagenet_v2", "imagenet_sketch"):
            assert acc[(role, copy)]["accuracy"] == acc[(role, "imagenet")]["accuracy"]

    # a target's class rows are the teacher's text side over its names: for -A's subset, exactly
    # the stored ImageNet rows of those classes (what the student scores against)
    import torch

    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.artefacts.run_layout import features_path, teacher_stem
    from kdpipe.methods.io import load_method
    from kdpipe.eval.scoring import class_features_for

    stored = read_class_features(features_path(run / "text-features-seed1"))
    teacher, _ = load_method(teacher_stem(run / "teacher-promptsrc-seed1"))
    a_names = [WNIDS[w][0] for w in A_WNIDS]
    subset = stored.features[[stored.classnames.index(n) for n in a_names]]
    assert torch.allclose(class_features_for(teacher, a_names), subset, atol=1e-6)

    md = (run / "report" / "results.md").read_text()
    header = "| method | role | backbone | protocol | seed | source: imagenet | " + " | ".join(targets) + " | average |"
    assert "## Transfer" in md and header in md
    student = next(line for line in md.splitlines() if line.startswith("| promptkd | student |") and "source" not in line)
    cells = [c.strip() for c in student.strip("|").split("|")]
    mean_of_targets = sum(acc[("student", d)]["accuracy"] for d in targets) / 4
    assert cells[3] == "inductive" and cells[-1] == f"{mean_of_targets:.1f}"
    assert cells[5:10] == [f"{acc[('student', d)]['accuracy']:.1f}" for d in ["imagenet", *targets]]

    # `kdpipe report RUN_DIR` over this real run gives the stage's transfer table
    combined = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "combined")])
    assert combined.exit_code == 0, f"{combined.output}\n{combined.exception!r}"
    transfer = (tmp_path / "combined" / "results.md").read_text().split("## Every row")[0]
    assert header in transfer and student in transfer


def test_transfer_table_averages_targets_only_and_says_when_the_source_is_missing():
    from kdpipe.eval.metrics import MetricRow
    from kdpipe.report import transfer_table

    def row(dataset, acc, protocol="transductive"):
        return MetricRow("promptkd", "student", "vit-b-16", dataset, 1, None, None, None, acc, protocol=protocol)

    table = transfer_table([row("imagenet", 90.0), row("dtd", 50.0), row("eurosat", 60.0)], "imagenet")
    assert "| promptkd | student | vit-b-16 | transductive | 1 | 90.0 | 50.0 | 60.0 | 55.0 |" in table
    assert "was not scored" not in table
    lone = transfer_table([row("dtd", 50.0)], "imagenet")
    assert "| source: imagenet | dtd | average |" in lone and "| - | 50.0 | 50.0 |" in lone
    assert "the source imagenet was not scored" in lone
