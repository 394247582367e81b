"""No network and no HF_HUB_OFFLINE: one quick connect tells, and a missing checkpoint fails at once
with one line naming the cache folder searched and both ways to provide the weights; cached weights
load with the hub switched off, so huggingface_hub never starts its retry loop. The network check
is replaced here: no test reaches the hub."""

from __future__ import annotations

import open_clip
import pytest
from huggingface_hub import constants

from kdpipe.clip import hub_access, load_backbone
from kdpipe.errors import KdpipeError


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE unset, a hub that cannot be reached, and open_clip never asked to download."""
    probes: list[tuple[str, int]] = []

    def connect(host, port, timeout):
        probes.append((host, port))
        return False

    def open_clip_reached(*args, **kwargs):
        raise AssertionError("open_clip was asked to fetch the weights: its retry loop would run")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in hub_access.PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_access, "_reachable", {})
    monkeypatch.setattr(hub_access, "_connect", connect)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", open_clip_reached)
    return probes


def test_missing_weights_without_network_name_the_cache_and_both_ways(tmp_path, no_network):
    cache = tmp_path / "hf" / "hub"
    with pytest.raises(KdpipeError) as e:
        load_backbone("vit-b-16", cache_dir=str(cache))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("weights for ViT-B-16-quickgelu:openai not found")
    assert str(cache.resolve()) in msg  # where they were looked for, not only the hub repo
    assert "cannot be reached" in msg
    assert "HF_HOME" in msg and "ViT-B-16-quickgelu:/path/ViT-B-16.pt" in msg  # the two ways to provide them
    with pytest.raises(KdpipeError):
        load_backbone("vit-b-32", cache_dir=str(cache))
    assert len(no_network) == 1  # the network is checked once per process, not per model


def test_the_default_cache_is_hf_hub_cache(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    with pytest.raises(KdpipeError, match=str(tmp_path / "home" / "hub")):
        load_backbone("vit-b-16")


def test_cached_weights_load_with_the_hub_switched_off(tmp_path, monkeypatch, no_network):
    import huggingface_hub

    seen = []

    def fake_create(*args, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise KdpipeError("stopped before building")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(tmp_path / "weights.safetensors"))
    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(KdpipeError, match="stopped before building"):
        load_backbone("vit-b-16")
    assert seen == [True] and constants.HF_HUB_OFFLINE is False  # switched off for the call, then put back
    assert no_network == []  # cached: no need to ask whether the hub is there
