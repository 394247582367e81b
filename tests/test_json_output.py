"""``--json`` on status, models, methods and datasets: one JSON document on stdout, nothing else
there (progress and notes go to stderr), with the same keys every time."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kdpipe.cli import app


def _json(*args):
    result = CliRunner().invoke(app, list(args))
    return result, json.loads(result.stdout)  # the whole of stdout parses: nothing else was printed there


def test_models_json_lists_every_backbone_with_its_dimensions():
    result, rows = _json("models", "--json")
    assert result.exit_code == 0, result.output
    by_name = {r["name"]: r for r in rows}
    assert set(rows[0]) == {"name", "open_clip", "weights", "activation", "embed_dim", "vision_width", "vision_layers",
                            "text_width", "text_layers", "image_size"}
    assert by_name["vit-b-16"]["open_clip"] == "ViT-B-16-quickgelu" and by_name["vit-b-16"]["activation"] == "QuickGELU"
    assert by_name["vit-b-16"]["embed_dim"] == 512 and by_name["vit-b-16"]["image_size"] == 224
    assert by_name["kd-tiny-s"]["weights"] is None  # random init: no weights to name


def test_methods_json_counts_learned_parameters():
    result, doc = _json("methods", "--backbone", "kd-tiny-s", "--teacher-dim", "48", "--json")
    assert result.exit_code == 0, result.output
    assert doc["backbone"] == "kd-tiny-s"
    rows = {r["method"]: r for r in doc["methods"]}
    assert set(rows["coop"]) == {"method", "learned", "epochs", "batch_size", "lr", "description"}
    assert rows["zeroshot"]["learned"] == 0 and rows["zeroshot"]["epochs"] is None
    assert rows["coop"]["learned"] > 0 and isinstance(rows["coop"]["lr"], float)

    result, ref = _json("methods", "--reference", "--json")
    assert result.exit_code == 0, result.output
    assert [r["method"] for r in ref] == list(rows) and "reference" in ref[0]


def test_datasets_json_names_kind_and_layout():
    result, rows = _json("datasets", "--json")
    assert result.exit_code == 0, result.output
    assert set(rows[0]) == {"name", "kind", "layout"}
    assert "oxford_pets" in {r["name"] for r in rows}


def test_status_json_gives_every_stage_and_the_counts(tmp_path):
    from test_run_status_cli import kdpipe

    (tmp_path / "toy.toml").write_text("[toy]\nb = 0.25\nsteps = 2\n")
    rd = tmp_path / "runs" / "x"
    assert kdpipe(tmp_path, "run", "all", "--recipe", "toy.toml", "--run-dir", str(rd)).returncode == 0
    st = kdpipe(tmp_path, "status", "--run-dir", str(rd), "--json", "--set", "toy.b=0.5")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["run_dir"] == str(rd) and doc["recipe"] == "toy.toml"
    stages = {s["name"]: s for s in doc["stages"]}
    assert set(stages["prep"]) == {"name", "state", "reason", "wall_time_s", "headline", "folder"}
    assert stages["prep"]["state"] == "done" and isinstance(stages["prep"]["wall_time_s"], float)
    assert stages["train"]["state"] == "stale" and stages["train"]["reason"].endswith("toy.b 0.25 -> 0.5")
    assert doc["counts"] == {"done": 1, "stale": 2}
