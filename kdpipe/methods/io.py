"""A method on disk, written and read here only: the stages, bundles and ``kdpipe classify`` share it.

``save_learned`` / ``read_learned``: one safetensors file holding the learned state (prompts,
projector ..., never the frozen CLIP), with the method's ``checkpoint_meta`` (method, backbone, class
names, config) in its metadata. ``save_method`` / ``load_method``: a trained method as a stage
leaves it, that file as ``<stem>.safetensors`` plus ``<stem>.json`` (the same meta and run facts
such as the seed, for people and tools); the method is rebuilt from the safetensors file alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kdpipe.errors import KdpipeError
from kdpipe.io import read_tensors, write_json, write_tensors

_META_KEY = "kdpipe_method"


def save_learned(method, path: str | os.PathLike) -> Path:
    """Write ``method.learned_state_dict()`` with ``checkpoint_meta()``, atomically."""
    return write_tensors(path, method.learned_state_dict(), {_META_KEY: method.checkpoint_meta()})


def read_learned(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The learned state and its metadata (which method, backbone, classes, config)."""
    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"method state {path} does not exist")
    state, meta = read_tensors(path)  # a damaged file is a one-line KdpipeError there
    if not isinstance(meta.get(_META_KEY), dict):
        raise KdpipeError(f"{path} is a safetensors file but not a kdpipe method state (no {_META_KEY} metadata)")
    return state, meta[_META_KEY]


def load_learned(method, path: str | os.PathLike) -> None:
    """Load a saved state into ``method``, refusing another method, backbone or class count."""
    state, meta = read_learned(path)
    method.load_learned_state_dict({k: v.to(method.device) for k, v in state.items()}, meta)


def save_method(method, stem: str | os.PathLike, **facts: Any) -> dict[str, Path]:
    """``<stem>.safetensors`` (learned state, meta inside) + ``<stem>.json`` (meta + ``facts``, for people)."""
    stem = Path(stem)
    weights = save_learned(method, stem.with_suffix(".safetensors"))
    info = write_json(stem.with_suffix(".json"), {**method.checkpoint_meta(), **facts})
    return {"weights": weights, "meta": info}


def load_method(path: str | os.PathLike, device="cpu", backbone=None, dataset: str | None = None):
    """(method in eval mode on ``device``, its meta) rebuilt from a learned-state file.

    ``path``: the ``.safetensors`` file, or the stem given to :func:`save_method`. The backbone the
    meta names is loaded unless ``backbone`` is given (a bundle's own weights, or one shared by
    several methods). ``dataset`` replaces the dataset it was trained on where the method uses it
    for scoring (the hand templates of zero-shot CLIP), for evaluation on another dataset; its
    settings are kept.
    """
    from kdpipe.clip import load_backbone
    from kdpipe.methods.registry import build_method

    state, meta = read_learned(Path(path).with_suffix(".safetensors"))
    if backbone is None:
        backbone = load_backbone(meta["backbone"], device=device)
    method = build_method(meta["method"], backbone, meta["classnames"], overrides=meta["config"], dataset=dataset or meta.get("dataset"))
    method.to(device)
    method.load_learned_state_dict({k: v.to(device) for k, v in state.items()}, meta)
    return method.eval(), meta
