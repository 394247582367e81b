"""Config sections, recipes, dataset overrides and --set checking (an isolated schema per test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from kdpipe.config import (
    DEFAULT_RECIPE,
    NOT_FINGERPRINTED,
    SHORTCUTS,
    ConfigSchema,
    coerce,
    list_recipes,
    load_recipe,
    resolve_config,
    runtime_setting,
    settings_from_cli,
)
from kdpipe.errors import KdpipeError


@dataclass
class Member:
    epochs: int = 5
    lr: float = 0.002
    workers: int = runtime_setting(4)


def make_schema() -> ConfigSchema:
    schema = ConfigSchema()

    @schema.section("data")
    @dataclass
    class Data:
        dataset: str = "caltech101"
        root: str = "~/data"
        shots: int = 16

    @schema.section("distill")
    @dataclass
    class Distill:
        lr: float = 0.005
        kd_weight: float = 1000.0
        epochs: int = 20
        amp: bool = True
        teacher_cache: Optional[str] = None
        mode: Literal["kl", "mse"] = "kl"

    @schema.section("run", members=None)
    @dataclass
    class Run:
        seed: int = 1
        seeds: list[int] = field(default_factory=list)

    @schema.section("baselines", members=lambda m: Member if m in ("coop", "vpt") else None)
    @dataclass
    class Baselines:
        methods: list[str] = field(default_factory=lambda: ["zeroshot"])

    return schema


@pytest.fixture
def empty_recipe(tmp_path):
    return write(tmp_path / "empty.toml", "")


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_typed_values():
    cfg = resolve_config(None, schema=make_schema())
    assert cfg["distill"].lr == 0.005 and cfg.value("distill.epochs") == 20
    assert cfg.value("distill")["kd_weight"] == 1000.0


def test_set_values_are_parsed_and_type_checked(empty_recipe):
    sets = ["distill.lr=0.01", "distill.epochs=3", "distill.amp=false", "run.seeds=1,2,3",
            "distill.teacher_cache=none", "distill.mode=mse", 'baselines.methods=["coop", "vpt"]']
    cfg = settings_from_cli(str(empty_recipe), sets, schema=make_schema()).config
    assert cfg["distill"].lr == 0.01 and isinstance(cfg["distill"].lr, float)
    assert cfg["distill"].epochs == 3 and cfg["distill"].amp is False
    assert cfg["run"].seeds == [1, 2, 3]
    assert cfg["distill"].teacher_cache is None and cfg["distill"].mode == "mse"
    assert cfg["baselines"].methods == ["coop", "vpt"]


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("distill.epochs", "three", "expected an integer"),
        ("distill.epochs", "2.5", "expected an integer"),
        ("distill.lr", "fast", "expected a number"),
        ("distill.amp", "maybe", "expected true/false"),
        ("run.seeds", "1,x", "expected an integer"),
        ("distill.mode", "l2", "one of 'kl', 'mse'"),
    ],
)
def test_bad_values_fail_with_the_expected_type(key, value, expected):
    with pytest.raises(KdpipeError, match=expected) as e:
        resolve_config(None, [(key, value, f"--set {key}={value}")], schema=make_schema())
    assert "\n" not in str(e.value) and "--set" in str(e.value)


def test_toml_values_are_type_checked_too(tmp_path):
    recipe = write(tmp_path / "r.toml", '[distill]\nepochs = "20"\n')
    with pytest.raises(KdpipeError, match=r"distill.epochs: expected an integer, got '20' \(from recipe r\)"):
        resolve_config(recipe, schema=make_schema())
    # an int where a float is expected is fine (TOML writes 200 for 200.0)
    ok = write(tmp_path / "ok.toml", "[distill]\nkd_weight = 200\n")
    assert resolve_config(ok, schema=make_schema())["distill"].kd_weight == 200.0


def test_unknown_set_key_suggests_the_closest(empty_recipe):
    with pytest.raises(KdpipeError, match=r"unknown config key 'distill.lrr' \(from --set distill.lrr=0.1\); did you mean 'distill.lr'\?"):
        settings_from_cli(str(empty_recipe), ["distill.lrr=0.1"], schema=make_schema())
    with pytest.raises(KdpipeError, match=r"--set 'distill\.lr': expected key=value"):
        settings_from_cli(str(empty_recipe), ["distill.lr"], schema=make_schema())
    with pytest.raises(KdpipeError, match=r"no section 'distil'.*did you mean 'distill\.\w+'"):
        resolve_config(None, [("distil.lr", "0.1", "--set")], schema=make_schema())


def test_unknown_recipe_key_suggests_the_closest(tmp_path):
    recipe = write(tmp_path / "r.toml", "[distill]\nkd_wieght = 200\n")
    with pytest.raises(KdpipeError, match=r"'distill.kd_wieght' \(from recipe r\); did you mean 'distill.kd_weight'"):
        resolve_config(recipe, schema=make_schema())


def test_member_tables_are_checked_against_the_member_dataclass(tmp_path):
    schema = make_schema()
    recipe = write(tmp_path / "r.toml", "[baselines]\nmethods = ['coop']\n[baselines.coop]\nepochs = 2\n")
    cfg = resolve_config(recipe, [("baselines.vpt.lr", "0.1", "--set")], schema=schema)
    assert cfg.member("baselines", "coop") == {"epochs": 2}
    assert cfg.value("baselines.coop") == {"epochs": 2}
    assert cfg.value("baselines.vpt") == {"lr": 0.1}
    assert cfg.value("baselines.vpt.epochs") == 5  # not set: the member's default
    with pytest.raises(KdpipeError, match="unknown member 'cocoop'"):
        resolve_config(None, [("baselines.cocoop.epochs", "1", "--set")], schema=schema)
    with pytest.raises(KdpipeError, match="did you mean 'baselines.coop.epochs'"):
        resolve_config(None, [("baselines.coop.epoch", "1", "--set")], schema=schema)
    with pytest.raises(KdpipeError, match="has no member tables"):
        resolve_config(None, [("distill.x.y", "1", "--set")], schema=schema)


def test_recipe_extends_and_dataset_overrides(tmp_path):
    schema = make_schema()
    write(tmp_path / "base.toml", 'description = "base"\n[distill]\nlr = 0.01\nepochs = 10\n'
          '[dataset_overrides.dtd]\n"distill.kd_weight" = 200\n'
          '[dataset_overrides.oxford_flowers.distill]\nkd_weight = 200\n')
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[distill]\nepochs = 3\n')
    cfg = resolve_config(child, schema=schema)
    assert (cfg["distill"].lr, cfg["distill"].epochs, cfg["distill"].kd_weight) == (0.01, 3, 1000.0)
    # both spellings of an override table work; the dataset may come from the command line
    for ds in ("dtd", "oxford_flowers"):
        cfg = resolve_config(child, [("data.dataset", ds, "--dataset")], schema=schema)
        assert cfg["distill"].kd_weight == 200.0
    # the command line beats the dataset override
    cfg = resolve_config(child, [("data.dataset", "dtd", "--dataset"), ("distill.kd_weight", "50", "--set")], schema=schema)
    assert cfg["distill"].kd_weight == 50.0


def test_dataset_override_keys_are_checked_even_when_not_used(tmp_path):
    recipe = write(tmp_path / "r.toml", '[dataset_overrides.dtd]\n"distill.kd_wait" = 200\n')
    with pytest.raises(KdpipeError, match=r"dataset_overrides.dtd.*did you mean 'distill.kd_weight'"):
        resolve_config(recipe, schema=make_schema())


def test_recipe_errors_are_one_line(tmp_path):
    with pytest.raises(KdpipeError, match="unknown recipe 'defualt'; did you mean 'default'"):
        load_recipe("defualt")
    with pytest.raises(KdpipeError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
    bad = write(tmp_path / "bad.toml", "[distill\nlr = 1\n")
    with pytest.raises(KdpipeError, match="not valid TOML") as e:
        load_recipe(bad)
    assert "\n" not in str(e.value)
    loop = write(tmp_path / "loop.toml", 'extends = "loop.toml"\n')
    with pytest.raises(KdpipeError, match="extends itself"):
        load_recipe(loop)
    top = write(tmp_path / "top.toml", "lr = 1\n")
    with pytest.raises(KdpipeError, match="must be a \\[section\\] table"):
        load_recipe(top)


def test_shortcuts_map_to_keys_and_set_wins(empty_recipe):
    schema = make_schema()
    assert SHORTCUTS["dataset"] == "data.dataset" and SHORTCUTS["seeds"] == "run.seeds"
    flags = dict(dataset="dtd", data_root="/d", seed="3", seeds="1,2", teacher=None)  # None: flag not given
    got = settings_from_cli(str(empty_recipe), ["run.seed=7"], flags, schema=schema)
    cfg = got.config
    assert (cfg["data"].dataset, cfg["data"].root, cfg["run"].seed, cfg["run"].seeds) == ("dtd", "/d", 7, [1, 2])
    # the run dir remembers each key once, with the value that won, as the user wrote it
    assert got.overrides == {"data.dataset": "dtd", "data.root": "/d", "run.seed": "7", "run.seeds": "1,2"}
    assert got.recipe == str(empty_recipe)
    # a relative --data-root is saved absolute, so the next command may start elsewhere
    rel = settings_from_cli(str(empty_recipe), shortcuts={"data_root": "some/data"}, schema=schema)
    assert rel.config["data"].root == rel.overrides["data.root"] == str(Path.cwd() / "some" / "data")
    with pytest.raises(KdpipeError, match="unknown shortcut --colour"):
        settings_from_cli(str(empty_recipe), shortcuts={"colour": "red"}, schema=schema)


def test_the_command_line_wins_over_what_the_run_dir_remembers(empty_recipe):
    schema = make_schema()
    remembered = {"distill.lr": ("0.1", "distill.lr=0.1 saved in rd/run.json"),
                  "data.dataset": ("dtd", "data.dataset=dtd saved in rd/run.json")}
    got = settings_from_cli(str(empty_recipe), ["distill.lr=0.2"], {"dataset": "eurosat"}, base=remembered, schema=schema)
    assert (got.config["distill"].lr, got.config["data"].dataset) == (0.2, "eurosat")
    assert got.overrides == {"distill.lr": "0.2", "data.dataset": "eurosat"}
    # what is not given again is kept, and a bad remembered value names where it came from
    kept = settings_from_cli(str(empty_recipe), base=remembered, schema=schema)
    assert kept.config["distill"].lr == 0.1 and kept.overrides == {"distill.lr": "0.1", "data.dataset": "dtd"}
    with pytest.raises(KdpipeError, match=r"distill.epochs: expected an integer, got 'x' \(from distill.epochs=x saved in rd/run.json\)"):
        settings_from_cli(str(empty_recipe), base={"distill.epochs": ("x", "distill.epochs=x saved in rd/run.json")}, schema=schema)


@pytest.fixture
def pipeline_schema(monkeypatch):
    """The real config sections (those of kdpipe.stages)."""
    from kdpipe.pipeline import GRAPH, STAGE_MODULES_ENV
    from kdpipe.stage_graph import stage_graph

    monkeypatch.delenv(STAGE_MODULES_ENV, raising=False)
    stage_graph()
    return GRAPH.schema


def test_no_recipe_means_the_default_one(pipeline_schema):
    got = settings_from_cli(None, schema=pipeline_schema)
    assert got.recipe == DEFAULT_RECIPE and got.overrides == {}
    assert got.config.flat() == resolve_config(DEFAULT_RECIPE, schema=pipeline_schema).flat()


def test_the_students_defaults_are_its_methods_reference_values(pipeline_schema):
    from kdpipe.methods.promptkd import PromptKDConfig

    cfg, ref = pipeline_schema.defaults(), PromptKDConfig()
    assert (cfg["student"].n_ctx, cfg["student"].depth) == (ref.n_ctx, ref.depth)
    for name in ("lr", "epochs", "batch_size", "momentum", "weight_decay", "warmup_epochs", "warmup_lr"):
        assert getattr(cfg["distill"], name) == getattr(ref, name), name


def test_shipped_recipes_are_valid_toml():
    assert "default" in list_recipes()
    for name in list_recipes():
        load_recipe(name)  # raises on bad TOML / bad extends


def test_coerce_optional_and_lists():
    assert coerce("none", Optional[int]) is None
    assert coerce("4", Optional[int]) == 4
    assert coerce([1, 2], list[float]) == [1.0, 2.0]
    assert coerce("", list[int]) == []
    with pytest.raises(KdpipeError):
        coerce(True, int)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_coerce_refuses_nan_and_inf_for_every_float(value):
    with pytest.raises(KdpipeError, match=r"^x must be a finite number, got .*\(from --set\)$"):
        coerce(value, float, "x", "--set")
    with pytest.raises(KdpipeError, match="finite"):
        coerce(value, Optional[float], "x", "--set")  # not "expected a number or none"
    with pytest.raises(KdpipeError, match="finite"):
        coerce([1.0, value], list[float], "x", "--set")


def test_shipped_recipes_resolve_against_the_pipeline(monkeypatch):
    from kdpipe.pipeline import GRAPH, STAGE_MODULES_ENV, Plan
    from kdpipe.stage_graph import stage_graph

    monkeypatch.delenv(STAGE_MODULES_ENV, raising=False)
    stage_graph()  # the real config sections and stages
    for name in list_recipes():
        cfg = resolve_config(name)  # every key known and typed
        if cfg["data"].dataset == "world":
            # demo recipes run through `kdpipe demo`, which points the backbones at the world
            # stage's weights; bare world-l/world-b are refused (tested in test_demo.py)
            cfg = resolve_config(name, [("teacher.backbone", "w/world-l.safetensors", "--teacher"),
                                        ("student.backbone", "w/world-b.safetensors", "--student")])
        Plan(GRAPH, cfg)  # the graph expands
    weights = {ds: resolve_config("default", [("data.dataset", ds, "--dataset")])["distill"].kd_weight
               for ds in ("dtd", "fgvc_aircraft", "oxford_flowers", "oxford_pets")}
    assert weights == {"dtd": 200.0, "fgvc_aircraft": 200.0, "oxford_flowers": 200.0, "oxford_pets": 1000.0}


def test_runtime_settings_are_left_out_of_fingerprint_values():
    cfg = resolve_config(None, [("baselines.coop.workers", "2", "--set"), ("baselines.coop.epochs", "3", "--set")],
                         schema=make_schema())
    assert cfg.value("baselines.coop") == {"workers": 2, "epochs": 3}
    assert cfg.fingerprint_value("baselines.coop") == {"epochs": 3}
    assert cfg.fingerprint_value("baselines.coop.workers") is NOT_FINGERPRINTED
    assert cfg.fingerprint_value("distill") == cfg.value("distill")
