"""World CLIP pretraining: it learns, it is reproducible, it is cached, it loads as a backbone."""

import importlib
import json

import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.world.pretrain import PRESETS, pretrain

# the package re-exports the function under the module's name, so fetch the module itself
pretrain_mod = importlib.import_module("kdpipe.world.pretrain")

# A few steps of the smallest model: enough to exercise every code path in seconds.
TINY = dict(budget=3, batch_size=64, bank_per_class=4, eval_per_class=2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "cache"))


def test_quick_pretraining_lifts_clean_zero_shot_well_above_chance(tmp_path):
    from kdpipe.clip import load_backbone
    from kdpipe.world.zeroshot import evaluate_world_zeroshot

    result = pretrain("world-b", tmp_path / "world-b.safetensors", seed=0, budget="quick", use_cache=False)
    assert result.steps == PRESETS["quick"]["world-b"].steps and not result.cached
    # the path alone is a spec: load it the way every stage does and measure on fresh renders
    backbone = load_backbone(str(result.path))
    assert backbone.arch == "world-b" and backbone.dims.context_length == 16
    zs = evaluate_world_zeroshot(backbone.model, backbone.tokenizer, backbone.mean, backbone.std, seed=1, per_class=10)
    chance = 100 / 64
    assert zs.clean > 4 * chance, zs
    assert result.zeroshot["clean"] > 4 * chance


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    from safetensors.torch import load_file

    a = pretrain("kd-tiny-s", tmp_path / "a.safetensors", seed=0, use_cache=False, **TINY)
    b = pretrain("kd-tiny-s", tmp_path / "b.safetensors", seed=0, use_cache=False, **TINY)
    c = pretrain("kd-tiny-s", tmp_path / "c.safetensors", seed=1, use_cache=False, **TINY)
    wa, wb, wc = (load_file(str(r.path)) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_second_call_comes_from_the_cache_without_training(tmp_path, monkeypatch):
    first = pretrain("kd-tiny-s", tmp_path / "run1" / "m.safetensors", seed=0, **TINY)
    assert not first.cached

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again instead of using the cache")

    monkeypatch.setattr(pretrain_mod, "train_world_clip", no_training)
    second = pretrain("kd-tiny-s", tmp_path / "run2" / "m.safetensors", seed=0, **TINY)
    assert second.cached and second.fingerprint == first.fingerprint
    assert second.path.read_bytes() == first.path.read_bytes()
    assert second.seconds == first.seconds and second.zeroshot == first.zeroshot
    sidecar = json.loads((tmp_path / "run2" / "m.safetensors.json").read_text())
    assert sidecar["cached"] is True and sidecar["fingerprint"] == first.fingerprint
    # anything that changes the weights changes the key: a new seed or schedule trains again
    with pytest.raises(AssertionError, match="pretrained again"):
        pretrain("kd-tiny-s", tmp_path / "run3" / "m.safetensors", seed=1, **TINY)
    with pytest.raises(AssertionError, match="pretrained again"):
        pretrain("kd-tiny-s", tmp_path / "run3" / "m.safetensors", seed=0, **{**TINY, "lr": 5e-4})


def test_bad_budgets_are_one_clear_error(tmp_path):
    with pytest.raises(KdpipeError, match="unknown pretraining budget"):
        pretrain("world-b", tmp_path / "m.safetensors", budget="huge")
    with pytest.raises(KdpipeError, match="positive number of steps"):
        pretrain("world-b", tmp_path / "m.safetensors", budget=0)
    with pytest.raises(KdpipeError, match="multiple of 64"):
        pretrain("world-b", tmp_path / "m.safetensors", budget=2, batch_size=100)
    with pytest.raises(KdpipeError, match="unknown world architecture"):
        pretrain("world-xl", tmp_path / "m.safetensors", budget=2)
