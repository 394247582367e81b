"""Model specs: friendly names, ``ARCH:TAG``, ``ARCH:PATH``, ``hf-hub:``/``local-dir:`` and saved
checkpoint files, parsed and checked without loading any weights."""

from __future__ import annotations

from pathlib import Path
from typing import Collection

from kdpipe.clip.activation import activation_name, arch_for_tag, is_quick_gelu
from kdpipe.clip.backbones.availability import check_schema_available, known_tag
from kdpipe.clip.backbones.registry import known_architectures, register_builtin_configs
from kdpipe.clip.backbones.saved import arch_from_safetensors
from kdpipe.errors import KdpipeError

# friendly name -> (open_clip architecture, pretrained tag); the activation comes from the tag
FRIENDLY_NAMES: dict[str, tuple[str, str]] = {
    "vit-b-16": ("ViT-B-16", "openai"),
    "vit-b-32": ("ViT-B-32", "openai"),
    "vit-l-14": ("ViT-L-14", "openai"),
    "vit-l-14-336": ("ViT-L-14-336", "openai"),
}
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # what a spec names as a checkpoint file


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
    path = checkpoint_spec(spec)
    if path is not None:
        return arch_from_safetensors(path), str(path)
    arch, sep, pretrained = spec.partition(":")
    known = known_architectures()
    if arch not in known:
        raise KdpipeError(
            f"unknown model {arch!r}; friendly names: {', '.join(FRIENDLY_NAMES)}; "
            f"open_clip architectures include: {', '.join(_closest(arch, known))} "
            "(or hf-hub:org/repo, local-dir:PATH, ARCH:TAG, ARCH:/path/to/weights)"
        )
    pretrained = (pretrained or None) if sep else None
    if pretrained is not None and not looks_like_file(pretrained):
        arch = arch_for_tag(arch, pretrained)
    return arch, pretrained


def checkpoint_spec(spec: str) -> Path | None:
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


def weights_path(pretrained: str, will_exist: Collection[Path] = ()) -> str | None:
    """The local file the ``PATH`` of ``ARCH:PATH`` names, None for a pretrained tag; a path that
    names no file (and is not in ``will_exist``, resolved paths written later in the run) is refused."""
    path = Path(pretrained).expanduser()
    if path.is_file() or path.resolve() in will_exist:
        return str(path)
    if looks_like_file(pretrained):
        raise KdpipeError(f"checkpoint file {pretrained} does not exist")
    return None


def looks_like_file(pretrained: str) -> bool:
    return (
        "/" in pretrained
        or pretrained.endswith(WEIGHT_SUFFIXES)
        or Path(pretrained).expanduser().is_file()
    )


def _closest(name: str, options: list[str], n: int = 8) -> list[str]:
    import difflib

    near = difflib.get_close_matches(name, options, n=n, cutoff=0.3)
    return near or options[:n]


def check_spec(spec: str, will_exist: Collection[Path] = ()) -> None:
    """Check ``spec`` without loading or downloading weights: the name, the tag and its activation,
    the files and folders it names. Paths in ``will_exist`` (resolved; files an earlier stage of the
    same run writes, like the demo world's checkpoints) count as present."""
    if Path(spec.strip()).expanduser().resolve() in will_exist:
        return
    arch, pretrained = parse_spec(spec)  # names, bare checkpoint files, the tag's activation
    if arch.startswith("local-dir:"):
        check_schema_available(arch)
    elif pretrained is not None and weights_path(pretrained, will_exist) is None:
        known_tag(arch, pretrained)


def spec_activation(spec: str) -> str:
    """The activation ``spec`` builds, from configs alone (no weights are read): QuickGELU or GELU."""
    arch, _ = parse_spec(spec)
    if arch.startswith(("hf-hub:", "local-dir:")):
        return "from its open_clip_config.json"
    return activation_name(is_quick_gelu(arch))
