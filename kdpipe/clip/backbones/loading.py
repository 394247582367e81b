"""Loading a spec into a :class:`Backbone` through open_clip: fp32 weights, eval mode, gradients off."""

from __future__ import annotations

import hashlib
import pickle

import torch

from kdpipe.clip.activation import arch_for_openai_file, strict_activation
from kdpipe.clip.backbones.availability import check_schema_available, check_tag_available, load_failure, not_weights_only, weights_file_problem
from kdpipe.clip.backbones.model import Backbone, assemble
from kdpipe.clip.backbones.registry import model_config, register_builtin_configs
from kdpipe.clip.backbones.saved import load_saved
from kdpipe.clip.backbones.specs import checkpoint_spec, parse_spec, weights_path
from kdpipe.clip.hub_access import hub_switched_off
from kdpipe.clip.torchscript import is_torchscript_archive, load_torchscript_weights
from kdpipe.errors import KdpipeError


def load_backbone(spec: str, device: str | torch.device = "cpu", cache_dir: str | None = None) -> Backbone:
    """Load a CLIP for prompt learning: fp32 weights, eval mode, gradients off."""
    import open_clip
    from safetensors import SafetensorError

    register_builtin_configs()
    saved = checkpoint_spec(spec)
    if saved is not None:
        return load_saved(spec, saved, device)
    arch, pretrained = parse_spec(spec)
    torchscript = None  # OpenAI's own archive: built without weights, then filled from the archive
    from_cache = False  # weights in the hub cache: read with the hub switched off (no retry loop offline)
    weights_file = None  # ARCH:PATH: read by open_clip with torch.load(weights_only=True) or safetensors
    if arch.startswith(("hf-hub:", "local-dir:")):
        from_cache = check_schema_available(arch)
    elif pretrained is not None:
        path = weights_path(pretrained)
        if path is None:
            from_cache = check_tag_available(arch, pretrained, cache_dir)
        elif is_torchscript_archive(path):
            arch, torchscript, pretrained = arch_for_openai_file(arch, path), path, None
        else:
            pretrained = weights_file = path
            problem = weights_file_problem(weights_file)
            if problem is not None:
                raise not_weights_only(spec, weights_file, problem)
    try:
        # Random init (an architecture without weights) must be the same model on every load, or a
        # stage that reloads the backbone (evaluate, classify) would not see the weights the
        # prompts were trained against. Seed it from the name, without touching the caller's RNG.
        with torch.random.fork_rng(devices=[]), strict_activation(spec), hub_switched_off(from_cache):
            torch.manual_seed(_name_seed(arch))
            model, preprocess_train, preprocess_test = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device, cache_dir=cache_dir
            )
        if torchscript is not None:
            load_torchscript_weights(model, torchscript)
    except KdpipeError:
        raise
    except (pickle.UnpicklingError, EOFError, SafetensorError) as e:  # from reading the weights, never from building
        if weights_file is not None:
            raise not_weights_only(spec, weights_file, load_failure(e)) from None
        raise KdpipeError(f"could not load {spec}: {load_failure(e)}") from None
    except (RuntimeError, FileNotFoundError, KeyError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KdpipeError(f"could not load {spec}: {first}") from e
    with hub_switched_off(from_cache):
        tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
    return assemble(spec, arch, model, (preprocess_train, preprocess_test), tokenizer, model_config(arch))


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
