"""Settings a user can get wrong are refused where they are parsed, in one line, before anything runs:
ranges declared next to each numeric field, and every backbone spec checked before the first stage."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

import kdpipe.stages  # noqa: F401  (registers the pipeline's sections in SCHEMA)
from kdpipe.config import SCHEMA, ConfigSchema, bounded, field_bounds, is_runtime_setting, resolve_config, runtime_setting, settings_from_cli
from kdpipe.errors import KdpipeError

from test_pipeline_fakedata import make_fake_pets


def refused(*sets: str, base=None) -> str:
    with pytest.raises(KdpipeError) as e:
        settings_from_cli(None, list(sets), base=base)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---- ranges -------------------------------------------------------------------------------------
def test_the_message_names_the_key_the_range_the_value_and_where_it_came_from():
    assert refused("distill.momentum=-5") == "distill.momentum must be in [0, 1), got -5.0 (from --set distill.momentum=-5)"
    assert refused("shards.holdout_fraction=2") == "shards.holdout_fraction must be in (0, 1], got 2.0 (from --set shards.holdout_fraction=2)"
    assert refused("distill.temperature=0").startswith("distill.temperature must be > 0, got 0.0")
    assert refused("distill.workers=-1").startswith("distill.workers must be >= 0, got -1")


@pytest.mark.parametrize("setting", ["distill.lr=nan", "distill.lr=inf", "distill.kd_weight=-inf", "teacher.lr=nan", "shards.holdout_fraction=nan"])
def test_nan_and_inf_are_refused(setting):
    msg = refused(setting)
    assert "finite" in msg and setting.split("=")[0] in msg


def test_a_batch_of_one_is_refused_with_the_reason():
    msg = refused("distill.batch_size=1")
    assert msg.startswith("distill.batch_size must be >= 2") and "BatchNorm" in msg and "got 1" in msg


@pytest.mark.parametrize("setting", [
    "distill.momentum=1", "distill.lr=0", "distill.lr=-0.1", "distill.kd_weight=-1", "distill.epochs=0",
    "distill.weight_decay=-0.1", "distill.warmup_epochs=-1", "distill.warmup_lr=-1", "distill.checkpoint_every=-1",
    "distill.agreement_every=-1", "distill.cache_views=-1",
    "shards.holdout_fraction=0", "shards.holdout=-1", "shards.per_shard=0", "shards.max_side=-1",
    "data.shots=-1", "data.workers=-1", "data.crop_scale=0.5,0.2", "data.crop_scale=0,1", "data.crop_scale=0.1,1.5",
    "data.crop_scale=0.5",
    "teacher.lr=-1", "teacher.batch_size=0", "teacher.epochs=0", "teacher.checkpoint_every=-1",
    "student.n_ctx=0", "student.depth=0", "evaluate.batch_size=0", "baselines.checkpoint_every=-1",
    # member tables are checked against the method's config, whose ranges its subclasses inherit
    "teacher.promptsrc.momentum=1.5", "baselines.coop.lr=0", "baselines.coop.batch_size=0", "teacher.promptsrc.lr=nan",
])
def test_out_of_range_values_are_refused_at_parse_time(setting):
    assert refused(setting).startswith(setting.split("=")[0] + " must be")


def test_values_at_the_edge_of_a_range_are_accepted():
    sets = ["distill.momentum=0", "shards.holdout_fraction=1", "data.shots=0", "distill.batch_size=2", "distill.workers=0",
            "shards.max_side=0", "shards.holdout=0", "teacher.lr=none", "teacher.epochs=none", "data.crop_scale=0.5,0.5",
            "distill.kd_weight=0", "teacher.promptsrc.momentum=0.99"]
    cfg = settings_from_cli(None, sets).config
    assert cfg["distill"].momentum == 0 and cfg["shards"].holdout_fraction == 1 and cfg["teacher"].lr is None


def test_recipes_and_saved_run_settings_are_range_checked_too(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[distill]\nmomentum = 1.0\n")
    with pytest.raises(KdpipeError, match=r"^distill.momentum must be in \[0, 1\), got 1.0 \(from recipe r\)$"):
        settings_from_cli(str(recipe))
    recipe.write_text("[dataset_overrides.dtd]\ndistill.temperature = -1.0\n")
    with pytest.raises(KdpipeError, match=r"distill.temperature must be > 0.*dataset_overrides.dtd"):
        settings_from_cli(str(recipe))
    recipe.write_text("[distill]\nlr = nan\n")
    with pytest.raises(KdpipeError, match="distill.lr must be a finite number"):
        settings_from_cli(str(recipe))
    saved = {"distill.lr": ("-1", f"distill.lr=-1 saved in {tmp_path}/run.json")}
    assert "saved in" in refused(base=saved) and refused(base=saved).startswith("distill.lr must be > 0")


def test_every_numeric_field_of_the_pipeline_sections_declares_a_range():
    from kdpipe.settings import sections

    unbounded = []
    for name, spec in SCHEMA.sections.items():
        if spec.cls.__module__ != sections.__name__:
            continue
        hints = typing.get_type_hints(spec.cls)
        for f in dataclasses.fields(spec.cls):
            numeric = {int, float} & ({hints[f.name]} | set(typing.get_args(hints[f.name])) |
                                      {a for t in typing.get_args(hints[f.name]) for a in typing.get_args(t)})
            if numeric and f"{name}.{f.name}" not in {"run.seed", "run.seeds"} and field_bounds(spec.cls, f.name) is None:
                unbounded.append(f"{name}.{f.name}")
    assert not unbounded, f"numeric settings without a declared range: {unbounded}"


def test_bounded_fields_in_a_schema_of_ones_own():
    schema = ConfigSchema()

    @schema.section("train")
    @dataclass
    class Train:
        lr: float = bounded(0.1, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        workers: int = runtime_setting(2, ge=0)
        scale: list[float] = bounded(default_factory=lambda: [0.5, 1.0], gt=0, le=1)

    assert is_runtime_setting(Train, "workers") and not is_runtime_setting(Train, "lr")
    cfg = resolve_config(None, [("train.momentum", "0.5", "--set")], schema=schema)
    assert cfg["train"].momentum == 0.5
    with pytest.raises(KdpipeError, match=r"train.workers must be >= 0, got -3 \(from --set\)"):
        resolve_config(None, [("train.workers", "-3", "--set")], schema=schema)
    with pytest.raises(KdpipeError, match=r"train.scale must be in \(0, 1\], got \[0.5, 2.0\]"):
        resolve_config(None, [("train.scale", "0.5,2", "--set")], schema=schema)

    # a default outside its own range is a programming error, caught when the section is declared
    with pytest.raises(ValueError, match="bad.lr"):
        @schema.section("bad")
        @dataclass
        class Bad:
            lr: float = bounded(-1.0, gt=0)


def test_method_configs_check_the_same_ranges():
    from kdpipe.methods.coop import CoOpConfig
    from kdpipe.methods.promptkd import PromptKDConfig

    for overrides, expected in [({"momentum": 1.5}, "momentum must be in [0, 1)"), ({"lr": "nan"}, "finite"),
                                ({"lr": 0}, "lr must be > 0"), ({"weight_decay": -1}, "weight_decay must be >= 0"),
                                ({"warmup_lr": -1}, "warmup_lr must be >= 0"), ({"epochs": 0}, "epochs must be >= 1")]:
        with pytest.raises(KdpipeError) as e:
            CoOpConfig.resolve(overrides=overrides)
        assert expected in str(e.value), (overrides, str(e.value))
    # validate() refuses the same values on a config built directly
    with pytest.raises(KdpipeError, match=r"momentum must be in \[0, 1\)"):
        PromptKDConfig(momentum=-0.5).validate()
    with pytest.raises(KdpipeError, match="lr must be a finite number"):
        PromptKDConfig(lr=float("inf")).validate()


# ---- backbone specs -----------------------------------------------------------------------------
def kdpipe_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KDPIPE_STAGE_MODULES"}
    env.update(HF_HUB_OFFLINE="1", CI="true")
    return subprocess.run([sys.executable, "-m", "kdpipe", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_bad_student_spec_fails_before_any_stage_runs(tmp_path):
    data = make_fake_pets(tmp_path / "data")
    run_dir = tmp_path / "run"
    common = ["--teacher", "kd-tiny-t", "--dataset", "oxford_pets", "--data-root", str(data), "--run-dir", str(run_dir)]
    out = kdpipe_cli(tmp_path, "run", "all", "--student", "nosuchmodel", *common)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "student.backbone" in errors[0] and "nosuchmodel" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not run_dir.exists() or not [p for p in run_dir.iterdir() if p.is_dir()], list(run_dir.iterdir())
    # a missing checkpoint file and an unknown pretrained tag: the same, in one line
    out = kdpipe_cli(tmp_path, "run", "all", "--student", str(tmp_path / "gone.safetensors"), *common)
    assert out.returncode != 0 and "gone.safetensors" in out.stderr and "does not exist" in out.stderr, out.stderr
    out = kdpipe_cli(tmp_path, "run", "all", "--student", "kd-tiny-s", "--teacher", "kd-tiny-t:nosuchtag",
                     *common[2:])
    assert out.returncode != 0 and "teacher.backbone" in out.stderr and "nosuchtag" in out.stderr, out.stderr
    assert not run_dir.exists() or not [p for p in run_dir.iterdir() if p.is_dir()]


def test_model_specs_are_checked_up_front_but_not_those_a_stage_writes(tmp_path):
    from kdpipe.commands.demo import demo_overrides
    from kdpipe.open_run import check_model_specs
    from kdpipe.stage_graph import stage_graph

    stage_graph()
    run_dir = tmp_path / "demo"
    base = {k: (v, "kdpipe demo") for k, v in demo_overrides(run_dir).items()}
    cfg = settings_from_cli("demo", base=base).config
    assert not Path(cfg["teacher"].backbone).exists()
    check_model_specs(cfg, run_dir)  # the world stage writes both backbones: nothing to refuse yet
    # the same missing file elsewhere is refused
    cfg = settings_from_cli("demo", [f"student.backbone={tmp_path / 'other' / 'world-b.safetensors'}"], base=base).config
    with pytest.raises(KdpipeError, match=r"student.backbone.*does not exist"):
        check_model_specs(cfg, run_dir)
    cfg = settings_from_cli(None, ["student.backbone=nosuchmodel"]).config
    with pytest.raises(KdpipeError, match=r"student.backbone = 'nosuchmodel'.*unknown model"):
        check_model_specs(cfg, tmp_path / "run")
    check_model_specs(settings_from_cli(None, ["teacher.backbone=kd-tiny-t", "student.backbone=kd-tiny-s"]).config, tmp_path / "run")


# ---- the demo world's settings and the method-specific ones (prompt length, depth, loss weights) ----
@pytest.mark.parametrize("setting", [
    "world.seed=-1", "world.student_steps=-1", "world.teacher_steps=-5", "world.lr=-0.1", "world.lr=nan",
    "world.train_per_class=0", "world.val_per_class=0", "world.test_per_class=-2", "world.processes=0",
    "teacher.promptsrc.n_ctx_text=0", "teacher.promptsrc.n_ctx_vision=-1", "teacher.promptsrc.depth_text=0",
    "teacher.promptsrc.depth_vision=0", "teacher.promptsrc.gpa_std=0", "teacher.promptsrc.gpa_mean=0",
    "teacher.promptsrc.gpa_ref_epochs=0", "teacher.promptsrc.text_loss_weight=-1", "teacher.promptsrc.kl_weight=inf",
    "baselines.coop.n_ctx=0", "baselines.cocoop.n_ctx=0", "baselines.ivlp.depth_text=0", "baselines.maple.n_ctx=0",
    "baselines.maple.depth=0", "baselines.mudpt.n_ctx=0", "baselines.mudpt.depth=0", "baselines.mudpt.fusion_mlp_ratio=0",
    "baselines.vpt.n_ctx=-1", "baselines.vpt.depth=0",
])
def test_world_and_method_specific_settings_are_refused_at_parse_time(setting):
    key = setting.split("=")[0]
    assert refused(setting).startswith(key + " must be"), refused(setting)


def test_their_edges_are_accepted():
    cfg = settings_from_cli(None, ["world.seed=0", "world.lr=0", "world.student_steps=0", "world.train_per_class=1",
                                   "baselines.vpt.n_ctx=0", "teacher.promptsrc.n_ctx_vision=0", "teacher.promptsrc.kl_weight=0",
                                   "baselines.maple.depth=1"]).config
    assert cfg["world"].seed == 0 and cfg["world"].train_per_class == 1


def test_every_numeric_field_of_the_world_and_of_every_method_declares_a_range():
    from kdpipe.methods.registry import get_method, list_methods
    from kdpipe.stages.world import WorldConfig

    unbounded = []
    for cls, label in [(WorldConfig, "world"), *[(get_method(m).config_cls, m) for m in list_methods()]]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float) and field_bounds(cls, f.name) is None:
                unbounded.append(f"{label}.{f.name}")
    # zero-shot's epochs = 0 means "nothing to train": the inherited epochs >= 1 does not apply to it
    assert unbounded == ["zeroshot.epochs"], f"numeric settings without a declared range: {unbounded}"
