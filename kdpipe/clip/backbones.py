"""Resolve a model spec into an open_clip CLIP, its transforms, tokenizer and dimensions.

Specs, in the order they are tried:
  - a friendly name (``vit-b-16``, ``vit-l-14`` ...) -> open_clip name + ``openai`` weights;
  - ``hf-hub:org/repo`` or ``local-dir:PATH`` -> handed to open_clip unchanged;
  - ``NAME:TAG`` -> open_clip architecture NAME with pretrained tag TAG;
  - ``NAME:PATH`` -> open_clip architecture NAME with weights from a local .pt/.safetensors file;
  - ``PATH`` to a .safetensors file written by :func:`save_backbone`: it records its architecture
    and its open_clip config, so it loads from itself alone (a ``local-dir:`` folder may be gone);
  - ``NAME`` alone -> random init, as open_clip does (the tiny test/demo configs are used this way).

Whatever the spelling, a pretrained tag builds the activation its weights were trained with
(:mod:`kdpipe.clip.activation`): ``vit-b-16`` and ``ViT-B-16:openai`` build ``ViT-B-16-quickgelu``,
and so does OpenAI's own TorchScript file given as ``ViT-B-16:/path/ViT-B-16.pt``. A plain state
dict (``ARCH:PATH``) cannot say how it was trained: its architecture is taken as given.

Weights are never fetched when ``HF_HUB_OFFLINE=1`` or the hub cannot be reached (one short
connect, :mod:`kdpipe.clip.hub_access`): a missing checkpoint fails in seconds with one line naming
the cache folder searched and both ways to provide it, instead of huggingface_hub's ~75 s of
retries; cached weights load with the hub switched off.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import torch
from torch import nn

from kdpipe.clip.activation import activation_name, arch_for_openai_file, arch_for_tag, is_quick_gelu, strict_activation
from kdpipe.clip.torchscript import is_torchscript_archive, load_torchscript_weights
from kdpipe.errors import KdpipeError
from kdpipe.io import read_tensors, tensor_file_problem

CONFIG_DIR = Path(__file__).parent / "configs"
# Architectures that ship with kdpipe: the tiny test configs and the demo world's CLIPs. All are
# registered before any spec is parsed, so a saved demo checkpoint loads in a fresh process.
BUILTIN_CONFIG_DIRS = (CONFIG_DIR, Path(__file__).parent.parent / "world" / "configs")

# friendly name -> (open_clip architecture, pretrained tag); the activation comes from the tag
FRIENDLY_NAMES: dict[str, tuple[str, str]] = {
    "vit-b-16": ("ViT-B-16", "openai"),
    "vit-b-32": ("ViT-B-32", "openai"),
    "vit-l-14": ("ViT-L-14", "openai"),
    "vit-l-14-336": ("ViT-L-14-336", "openai"),
}

_ARCH_METADATA_KEY = "kdpipe_arch"
_CONFIG_METADATA_KEY = "kdpipe_config"  # {"model_cfg", "preprocess_cfg"}: open_clip_config.json's layout
_TOWERS_METADATA_KEY = "kdpipe_towers"  # the towers a file holds; absent = both
TOWERS = ("visual", "text")
# the top-level CLIP attributes of the built-in text tower (everything else but logit_scale/bias is visual.*)
_TEXT_TOWER = frozenset({"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask"})
_registered_dirs: set[Path] = set()
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # what a spec names as a checkpoint file


def register_config_dir(path: str | Path) -> None:
    """Make every open_clip model config (JSON) in ``path`` available by its file stem."""
    import open_clip

    path = Path(path).resolve()
    if path not in _registered_dirs:
        open_clip.add_model_config(path)
        _registered_dirs.add(path)


def register_builtin_configs() -> None:
    for path in BUILTIN_CONFIG_DIRS:
        if path.is_dir():
            register_config_dir(path)


def known_architectures() -> list[str]:
    import open_clip

    register_builtin_configs()
    return open_clip.list_models()


@dataclass(frozen=True)
class BackboneDims:
    """What a method needs to size its prompts and projector."""

    embed_dim: int  # joint image/text feature size (512 for ViT-B/16, 768 for ViT-L/14)
    vision_width: int  # token width inside the vision transformer
    vision_layers: int
    text_width: int  # token width inside the text transformer
    text_layers: int
    image_size: int
    context_length: int  # text tokens per prompt
    logit_scale: float  # logit_scale.exp() of the loaded weights


@dataclass
class Backbone:
    """A loaded CLIP with everything needed to feed it."""

    spec: str  # the spec the user gave, normalised (recorded in manifests and bundles)
    arch: str  # open_clip architecture name as built (``-quickgelu`` when the weights need it), or hf-hub:/local-dir:
    model: nn.Module  # open_clip CLIP, fp32, eval mode
    preprocess_train: Callable
    preprocess_test: Callable
    tokenizer: Callable[[list[str]], torch.Tensor]
    dims: BackboneDims
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # what it was built from, in open_clip_config.json's layout ({"model_cfg", "preprocess_cfg"}):
    # saved with the weights, so a copy never needs the spec it came from
    config: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "arch": self.arch, "activation": self.activation, **asdict(self.dims)}

    @property
    def activation(self) -> str:
        """``QuickGELU`` or ``GELU``, read from the built residual blocks."""
        return built_activation(self.model)


def built_activation(model: nn.Module) -> str:
    from open_clip.transformer import QuickGELU

    acts = {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    return "QuickGELU" if acts == {"QuickGELU"} else ("GELU" if acts == {"GELU"} else "+".join(sorted(acts)) or "?")


def read_dims(model: nn.Module) -> BackboneDims:
    if not hasattr(model, "visual") or not hasattr(model.visual, "transformer"):
        raise KdpipeError("kdpipe needs a ViT CLIP with a transformer vision tower (ResNet CLIPs are not supported)")
    if not hasattr(model, "transformer") or not hasattr(model, "token_embedding"):
        raise KdpipeError("kdpipe needs a CLIP with the built-in text transformer (custom HF text towers are not supported)")
    visual = model.visual
    image_size = visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return BackboneDims(
        embed_dim=int(model.text_projection.shape[1]) if model.text_projection is not None else model.transformer.width,
        vision_width=int(visual.transformer.width),
        vision_layers=len(visual.transformer.resblocks),
        text_width=int(model.transformer.width),
        text_layers=len(model.transformer.resblocks),
        image_size=int(image_size),
        context_length=int(model.context_length),
        logit_scale=float(model.logit_scale.detach().exp()),
    )


def _missing_weights(what: str, cache: str, looked: str, why: str, arch: str = "ARCH") -> KdpipeError:
    """One line: what is missing, where it was looked for, why it cannot be fetched, the two ways to
    provide it (``arch`` is the spelling a local file needs, ``-quickgelu`` included)."""
    return KdpipeError(
        f"weights for {what} not found in the cache {cache} ({looked}) and {why}; either provide a populated "
        f"HF_HOME (download them once on a machine online, copy its Hugging Face cache here, set HF_HOME to it) "
        f"or pass a local file as {arch}:/path/{arch.removesuffix('-quickgelu')}.pt (.pt or .safetensors)"
    )


def _known_tag(arch: str, tag: str) -> dict:
    """open_clip's config of ``arch:tag``; one line listing the known tags when there is none."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise KdpipeError(
            f"unknown pretrained tag {tag!r} for {arch}; known tags: {', '.join(tags) or 'none'} "
            f"(or give a file: {arch}:/path/to/weights.pt; OpenAI weights: {_quick_name(arch)}:/path/to/weights.pt)"
        )
    return cfg


def check_spec(spec: str, will_exist: Collection[Path] = ()) -> None:
    """Check ``spec`` without loading or downloading weights: the name, the tag and its activation,
    the files and folders it names. Paths in ``will_exist`` (resolved; files an earlier stage of the
    same run writes, like the demo world's checkpoints) count as present."""
    if Path(spec.strip()).expanduser().resolve() in will_exist:
        return
    arch, pretrained = parse_spec(spec)  # names, bare checkpoint files, the tag's activation
    if arch.startswith("local-dir:"):
        _check_schema_available(arch)
    elif pretrained is not None and _weights_path(pretrained, will_exist) is None:
        _known_tag(arch, pretrained)


def _check_tag_available(arch: str, tag: str, cache_dir: str | None) -> bool:
    """Fail fast (no download possible) or with a clear line (unknown tag) before open_clip tries
    the network. True when the weights are in the hub cache: then they load with the hub switched
    off, so a machine without network never enters huggingface_hub's retry loop."""
    import huggingface_hub

    from kdpipe.clip.hub_access import hub_cache, why_no_download

    cfg = _known_tag(arch, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in filenames:
            if isinstance(huggingface_hub.try_to_load_from_cache(repo, name, cache_dir=cache_dir), str):
                return True
        why = why_no_download()  # asks the network only now that the cache has nothing
        if why is not None:
            raise _missing_weights(f"{arch}:{tag}", hub_cache(cache_dir), f"hf-hub {repo}, files {', '.join(filenames)}", why, arch)
        return False
    url = cfg.get("url", "")
    if url:
        target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        why = None if target.is_file() else why_no_download()
        if why is not None:
            raise _missing_weights(f"{arch}:{tag}", str(target.parent), target.name, why, arch)
    return False


def _check_schema_available(spec: str) -> bool:
    """Fail fast on a missing ``local-dir:`` folder, or an ``hf-hub:`` model that is not cached
    where nothing can be downloaded. True when it must load from the cache with the hub off."""
    schema, _, ident = spec.partition(":")
    if schema == "local-dir":
        if not Path(ident).is_dir():
            raise KdpipeError(f"local-dir {ident} does not exist (expected a folder with open_clip_config.json and weights)")
    elif schema == "hf-hub":
        import huggingface_hub

        from kdpipe.clip.hub_access import hub_cache, why_no_download

        why = why_no_download()
        if why is not None:
            if not isinstance(huggingface_hub.try_to_load_from_cache(ident, "open_clip_config.json"), str):
                raise _missing_weights(spec, hub_cache(), f"hf-hub {ident}, open_clip_config.json", why)
            return True
    return False


def _saved_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise KdpipeError(
            f"{path} is not a readable safetensors checkpoint ({tensor_file_problem(path, e)}); give a file kdpipe "
            f"saved (a bundle's backbone.safetensors, save_backbone), or other weights as ARCH:{path}"
        ) from None


def _arch_from_safetensors(path: Path) -> str:
    arch = _saved_metadata(path).get(_ARCH_METADATA_KEY)
    if not arch:
        raise KdpipeError(
            f"{path} does not record its architecture; give it as ARCH:{path} "
            f"(OpenAI ViT-B/16 weights: ViT-B-16-quickgelu:{path})"
        )
    return arch


def _name_seed(name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _quick_name(arch: str) -> str:
    """The spelling to suggest for OpenAI weights: the QuickGELU sibling when there is one."""
    return arch if is_quick_gelu(arch) or not is_quick_gelu(arch + "-quickgelu") else arch + "-quickgelu"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into (open_clip model name, pretrained tag or file or None).

    With a pretrained tag the name is the architecture with the tag's activation
    (``vit-b-16`` -> ``("ViT-B-16-quickgelu", "openai")``).
    """
    spec = spec.strip()
    if not spec:
        raise KdpipeError("empty model spec")
    if spec in FRIENDLY_NAMES:  # case-sensitive: "ViT-B-16" is open_clip's random-init name
        arch, tag = FRIENDLY_NAMES[spec]
        register_builtin_configs()
        return arch_for_tag(arch, tag), tag
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    path = _checkpoint_spec(spec)
    if path is not None:
        return _arch_from_safetensors(path), str(path)
    arch, sep, pretrained = spec.partition(":")
    known = known_architectures()
    if arch not in known:
        raise KdpipeError(
            f"unknown model {arch!r}; friendly names: {', '.join(FRIENDLY_NAMES)}; "
            f"open_clip architectures include: {', '.join(_closest(arch, known))} "
            "(or hf-hub:org/repo, local-dir:PATH, ARCH:TAG, ARCH:/path/to/weights)"
        )
    pretrained = (pretrained or None) if sep else None
    if pretrained is not None and not _looks_like_file(pretrained):
        arch = arch_for_tag(arch, pretrained)
    return arch, pretrained


def _checkpoint_spec(spec: str) -> Path | None:
    """The file a bare ``PATH`` spec names (a .safetensors kdpipe saved), None for other specs."""
    path = Path(spec.strip()).expanduser()
    if path.suffix not in WEIGHT_SUFFIXES or ":" in spec.strip().split("/")[0]:
        return None
    if not path.is_file():
        raise KdpipeError(f"checkpoint file {path} does not exist")
    if path.suffix != ".safetensors":
        raise KdpipeError(
            f"{path}: a .pt checkpoint does not record its architecture; give it as ARCH:{path} "
            f"(OpenAI ViT-B/16 weights: ViT-B-16-quickgelu:{path})"
        )
    return path


def _weights_path(pretrained: str, will_exist: Collection[Path] = ()) -> str | None:
    """The local file the ``PATH`` of ``ARCH:PATH`` names, None for a pretrained tag; a path that
    names no file (and is not in ``will_exist``, resolved paths written later in the run) is refused."""
    path = Path(pretrained).expanduser()
    if path.is_file() or path.resolve() in will_exist:
        return str(path)
    if _looks_like_file(pretrained):
        raise KdpipeError(f"checkpoint file {pretrained} does not exist")
    return None


def _looks_like_file(pretrained: str) -> bool:
    return (
        "/" in pretrained
        or pretrained.endswith(WEIGHT_SUFFIXES)
        or Path(pretrained).expanduser().is_file()
    )


def _closest(name: str, options: list[str], n: int = 8) -> list[str]:
    import difflib

    near = difflib.get_close_matches(name, options, n=n, cutoff=0.3)
    return near or options[:n]


def load_backbone(spec: str, device: str | torch.device = "cpu", cache_dir: str | None = None) -> Backbone:
    """Load a CLIP for prompt learning: fp32 weights, eval mode, gradients off."""
    import open_clip
    from safetensors import SafetensorError

    from kdpipe.clip.hub_access import hub_switched_off

    register_builtin_configs()
    saved = _checkpoint_spec(spec)
    if saved is not None:
        return _load_saved(spec, saved, device)
    arch, pretrained = parse_spec(spec)
    torchscript = None  # OpenAI's own archive: built without weights, then filled from the archive
    from_cache = False  # weights in the hub cache: read with the hub switched off (no retry loop offline)
    weights_file = None  # ARCH:PATH: read by open_clip with torch.load(weights_only=True) or safetensors
    if arch.startswith(("hf-hub:", "local-dir:")):
        from_cache = _check_schema_available(arch)
    elif pretrained is not None:
        path = _weights_path(pretrained)
        if path is None:
            from_cache = _check_tag_available(arch, pretrained, cache_dir)
        elif is_torchscript_archive(path):
            arch, torchscript, pretrained = arch_for_openai_file(arch, path), path, None
        else:
            pretrained = weights_file = path
            problem = _weights_file_problem(weights_file)
            if problem is not None:
                raise _not_weights_only(spec, weights_file, problem)
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
            raise _not_weights_only(spec, weights_file, _load_failure(e)) from None
        raise KdpipeError(f"could not load {spec}: {_load_failure(e)}") from None
    except (RuntimeError, FileNotFoundError, KeyError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KdpipeError(f"could not load {spec}: {first}") from e
    with hub_switched_off(from_cache):
        tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
    return _assemble(spec, arch, model, (preprocess_train, preprocess_test), tokenizer, model_config(arch))


def _weights_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be the weights of an ``ARCH:PATH`` spec (None: it looks like a checkpoint).

    open_clip reads a ``.safetensors`` name with safetensors and anything else with ``torch.load``;
    checked first so that a text file or a damaged one is named as such rather than by a pickle opcode.
    """
    from safetensors import SafetensorError, safe_open

    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt"):
                return None
        except (SafetensorError, OSError, ValueError) as e:
            return tensor_file_problem(path, e)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return e.strerror or type(e).__name__
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save: a zip (since torch 1.6) or a bare pickle
        return None
    return "the file is empty" if not head else "it is neither a safetensors file nor a torch.save checkpoint"


def _load_failure(e: BaseException) -> str:
    """What torch.load / safetensors said, in one short line (torch's refusals run to paragraphs)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().split("\n\n", 1)[0]
        detail = " ".join(detail.split()).split(". ", 1)[0].rstrip(".")
        return f"torch.load(weights_only=True) refused it: {detail}"[:300]
    return " ".join(text.split())[:300] or type(e).__name__


def _not_weights_only(spec: str, path: str, reason: str) -> KdpipeError:
    arch = spec.partition(":")[0]
    return KdpipeError(
        f"{path} is not a weights-only checkpoint ({reason}); kdpipe never unpickles objects: give {arch}:PATH "
        "a .safetensors file or a torch.save'd state dict holding tensors only (or OpenAI's TorchScript .pt)"
    )


def _assemble(spec: str, arch: str, model: nn.Module, transforms: tuple[Callable, Callable], tokenizer: Callable,
              model_cfg: dict[str, Any] | None) -> Backbone:
    """The :class:`Backbone` of a built model: frozen, eval mode, with the config it was built from."""
    import open_clip

    model.eval().requires_grad_(False)
    config = _open_clip_config(model, model_cfg)
    pp = config["preprocess_cfg"] if config else {}
    return Backbone(
        spec=spec,
        arch=arch,
        model=model,
        preprocess_train=transforms[0],
        preprocess_test=transforms[1],
        tokenizer=tokenizer,
        dims=read_dims(model),
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        config=config,
    )


def _open_clip_config(model: nn.Module, model_cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"model_cfg", "preprocess_cfg"}`` (open_clip_config.json's layout) of a built model, as plain JSON."""
    if model_cfg is None:
        return None
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    return json.loads(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}))


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
    from kdpipe.io import write_safetensors

    unknown = set(towers) - set(TOWERS)
    if unknown or not towers:
        raise KdpipeError(f"towers must be a non-empty subset of {TOWERS}, got {towers}")
    config = config or _open_clip_config(model, model_config(arch))
    meta = {_ARCH_METADATA_KEY: arch, _TOWERS_METADATA_KEY: ",".join(t for t in TOWERS if t in towers)}
    if config is not None:
        meta[_CONFIG_METADATA_KEY] = json.dumps(config, sort_keys=True)
    state = {k: v for k, v in model.state_dict().items() if tower_of(k) in (*towers, "shared")}
    return write_safetensors(path, state, meta)


def _load_saved(spec: str, path: Path, device: str | torch.device) -> Backbone:
    """A checkpoint :func:`save_backbone` wrote, built from the config inside it: no other file is read."""
    import open_clip

    meta = _saved_metadata(path)
    arch = _arch_from_safetensors(path)
    config = json.loads(meta[_CONFIG_METADATA_KEY]) if _CONFIG_METADATA_KEY in meta else None
    if config is None:  # written before configs were recorded: the architecture must still resolve
        if arch.startswith(("hf-hub:", "local-dir:")):
            _check_schema_available(arch)
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
    return _assemble(spec, arch, model, (preprocess_train, preprocess_test), open_clip.get_tokenizer(name), config["model_cfg"])


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
    import hashlib
    import tempfile

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


def spec_activation(spec: str) -> str:
    """The activation ``spec`` builds, from configs alone (no weights are read): QuickGELU or GELU."""
    arch, _ = parse_spec(spec)
    if arch.startswith(("hf-hub:", "local-dir:")):
        return "from its open_clip_config.json"
    return activation_name(is_quick_gelu(arch))


def model_config(arch: str) -> dict[str, Any] | None:
    """The open_clip JSON config of an architecture, if it is a registered name."""
    import open_clip

    register_builtin_configs()
    cfg = open_clip.get_model_config(arch)
    return json.loads(json.dumps(cfg)) if cfg else None
