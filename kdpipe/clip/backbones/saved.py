"""Checkpoints kdpipe writes (:func:`save_backbone`): safetensors that record their architecture,
open_clip config and towers, so the file alone is a spec and loads without the spec it came from."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kdpipe.clip.backbones.availability import check_schema_available
from kdpipe.clip.backbones.model import Backbone, assemble, open_clip_config
from kdpipe.clip.backbones.registry import model_config
from kdpipe.errors import KdpipeError
from kdpipe.io import read_tensors, tensor_file_problem, write_safetensors

_ARCH_METADATA_KEY = "kdpipe_arch"
_CONFIG_METADATA_KEY = "kdpipe_config"  # {"model_cfg", "preprocess_cfg"}: open_clip_config.json's layout
_TOWERS_METADATA_KEY = "kdpipe_towers"  # the towers a file holds; absent = both
TOWERS = ("visual", "text")
# the top-level CLIP attributes of the built-in text tower (everything else but logit_scale/bias is visual.*)
_TEXT_TOWER = frozenset({"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask"})


def saved_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise KdpipeError(
            f"{path} is not a readable safetensors checkpoint ({tensor_file_problem(path, e)}); give a file kdpipe "
            f"saved (a bundle's backbone.safetensors, save_backbone), or other weights as ARCH:{path}"
        ) from None


def arch_from_safetensors(path: Path) -> str:
    arch = saved_metadata(path).get(_ARCH_METADATA_KEY)
    if not arch:
        raise KdpipeError(
            f"{path} does not record its architecture; give it as ARCH:{path} "
            f"(OpenAI ViT-B/16 weights: ViT-B-16-quickgelu:{path})"
        )
    return arch


def tower_of(key: str) -> str:
    """Which part of an open_clip CLIP a state-dict key belongs to: ``visual``, ``text`` or ``shared`` (logit_scale ...)."""
    head = key.split(".", 1)[0]
    return "visual" if head == "visual" else ("text" if head in _TEXT_TOWER else "shared")


def save_backbone(model: nn.Module, arch: str, path: str | Path, *, config: dict[str, Any] | None = None,
                  towers: tuple[str, ...] = TOWERS) -> Path:
    """Write CLIP weights as safetensors that record their architecture and config, so ``PATH`` alone is a spec.

    ``config`` (open_clip_config.json's layout, :attr:`Backbone.config`) defaults to the registered
    config of ``arch`` and the model's preprocessing. ``towers`` leaves a tower out (a student never
    encodes text); what is shared (logit_scale) is always kept.
    """
    unknown = set(towers) - set(TOWERS)
    if unknown or not towers:
        raise KdpipeError(f"towers must be a non-empty subset of {TOWERS}, got {towers}")
    config = config or open_clip_config(model, model_config(arch))
    meta = {_ARCH_METADATA_KEY: arch, _TOWERS_METADATA_KEY: ",".join(t for t in TOWERS if t in towers)}
    if config is not None:
        meta[_CONFIG_METADATA_KEY] = json.dumps(config, sort_keys=True)
    state = {k: v for k, v in model.state_dict().items() if tower_of(k) in (*towers, "shared")}
    return write_safetensors(path, state, meta)


def load_saved(spec: str, path: Path, device: str | torch.device) -> Backbone:
    """A checkpoint :func:`save_backbone` wrote, built from the config inside it: no other file is read."""
    import open_clip

    meta = saved_metadata(path)
    arch = arch_from_safetensors(path)
    config = json.loads(meta[_CONFIG_METADATA_KEY]) if _CONFIG_METADATA_KEY in meta else None
    if config is None:  # written before configs were recorded: the architecture must still resolve
        if arch.startswith(("hf-hub:", "local-dir:")):
            check_schema_available(arch)
        config = {"model_cfg": model_config(arch), "preprocess_cfg": {}}
        if config["model_cfg"] is None:
            raise KdpipeError(f"{path} records architecture {arch!r}, which is not a known open_clip config; re-save it with this kdpipe")
    name = _register_config(config["model_cfg"])
    pp = config.get("preprocess_cfg") or {}
    try:
        # building initialises weights at random before the file overwrites them: leave the caller's RNG alone
        with torch.random.fork_rng(devices=[]), _quiet_random_init(name):
            model, preprocess_train, preprocess_test = open_clip.create_model_and_transforms(
                name, device=device, image_mean=pp.get("mean"), image_std=pp.get("std"),
                image_interpolation=pp.get("interpolation"), image_resize_mode=pp.get("resize_mode"),
            )
    except (RuntimeError, KeyError, ValueError) as e:
        raise KdpipeError(f"could not build the model {path} records: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    towers = tuple(meta.get(_TOWERS_METADATA_KEY, ",".join(TOWERS)).split(","))
    _load_towers(model, path, towers)
    return assemble(spec, arch, model, (preprocess_train, preprocess_test), open_clip.get_tokenizer(name), config["model_cfg"])


@contextlib.contextmanager
def _quiet_random_init(name: str) -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning for ``name``: its weights are loaded right after."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"No pretrained weights loaded for model '{name}'")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _register_config(model_cfg: dict[str, Any]) -> str:
    """Register ``model_cfg`` with open_clip under a name made from its content; return the name.

    open_clip builds only registered names, and registers JSON files by their stem: the file is
    written to a throwaway folder, read once, and the entry stays for the process.
    """
    import open_clip

    name = "kdpipe-" + hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]
    if open_clip.get_model_config(name) is None:
        with tempfile.TemporaryDirectory() as tmp:
            cfg_file = Path(tmp) / f"{name}.json"
            cfg_file.write_text(json.dumps(model_cfg))
            open_clip.add_model_config(cfg_file)
    return name


def _load_towers(model: nn.Module, path: Path, towers: tuple[str, ...]) -> None:
    """Load ``path`` into ``model``: exactly the keys of ``towers`` + shared ones; a left-out tower is NaN.

    Anything else missing or unexpected is refused: the file does not belong to this architecture.
    NaN makes a left-out tower fail loudly if anything ever runs it, instead of giving random features.
    """
    params = model.state_dict(keep_vars=True)
    left_out = {k for k in params if tower_of(k) not in (*towers, "shared")}
    result = model.load_state_dict(read_tensors(path)[0], strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if missing != left_out or unexpected:
        raise KdpipeError(
            f"{path} does not fit the architecture it records (towers {','.join(towers)}): "
            f"missing {sorted(missing - left_out)[:3]}, unexpected {sorted(unexpected | (left_out - missing))[:3]}; re-export it"
        )
    with torch.no_grad():
        for k in left_out:
            if params[k].is_floating_point():
                params[k].fill_(float("nan"))
