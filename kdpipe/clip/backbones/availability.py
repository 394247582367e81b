"""Whether weights can be had, decided before open_clip tries: what the hub cache holds, whether a
download is possible at all (:mod:`kdpipe.clip.hub_access`), whether a file is weights-only; each
refusal is one line naming where kdpipe looked and how to provide the weights."""

from __future__ import annotations

import os
from pathlib import Path

from kdpipe.clip.activation import is_quick_gelu
from kdpipe.clip.hub_access import hub_cache, why_no_download
from kdpipe.errors import KdpipeError
from kdpipe.io import tensor_file_problem


def missing_weights(what: str, cache: str, looked: str, why: str, arch: str = "ARCH") -> KdpipeError:
    """One line: what is missing, where it was looked for, why it cannot be fetched, the two ways to
    provide it (``arch`` is the spelling a local file needs, ``-quickgelu`` included)."""
    return KdpipeError(
        f"weights for {what} not found in the cache {cache} ({looked}) and {why}; either provide a populated "
        f"HF_HOME (download them once on a machine online, copy its Hugging Face cache here, set HF_HOME to it) "
        f"or pass a local file as {arch}:/path/{arch.removesuffix('-quickgelu')}.pt (.pt or .safetensors)"
    )


def known_tag(arch: str, tag: str) -> dict:
    """open_clip's config of ``arch:tag``; one line listing the known tags when there is none."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise KdpipeError(
            f"unknown pretrained tag {tag!r} for {arch}; known tags: {', '.join(tags) or 'none'} "
            f"(or give a file: {arch}:/path/to/weights.pt; OpenAI weights: {quick_name(arch)}:/path/to/weights.pt)"
        )
    return cfg


def quick_name(arch: str) -> str:
    """The spelling to suggest for OpenAI weights: the QuickGELU sibling when there is one."""
    return arch if is_quick_gelu(arch) or not is_quick_gelu(arch + "-quickgelu") else arch + "-quickgelu"


def check_tag_available(arch: str, tag: str, cache_dir: str | None) -> bool:
    """Fail fast (no download possible) or with a clear line (unknown tag) before open_clip tries
    the network. True when the weights are in the hub cache: then they load with the hub switched
    off, so a machine without network never enters huggingface_hub's retry loop."""
    import huggingface_hub

    cfg = known_tag(arch, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in filenames:
            if isinstance(huggingface_hub.try_to_load_from_cache(repo, name, cache_dir=cache_dir), str):
                return True
        why = why_no_download()  # asks the network only now that the cache has nothing
        if why is not None:
            raise missing_weights(f"{arch}:{tag}", hub_cache(cache_dir), f"hf-hub {repo}, files {', '.join(filenames)}", why, arch)
        return False
    url = cfg.get("url", "")
    if url:
        target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        why = None if target.is_file() else why_no_download()
        if why is not None:
            raise missing_weights(f"{arch}:{tag}", str(target.parent), target.name, why, arch)
    return False


def check_schema_available(spec: str) -> bool:
    """Fail fast on a missing ``local-dir:`` folder, or an ``hf-hub:`` model that is not cached
    where nothing can be downloaded. True when it must load from the cache with the hub off."""
    schema, _, ident = spec.partition(":")
    if schema == "local-dir":
        if not Path(ident).is_dir():
            raise KdpipeError(f"local-dir {ident} does not exist (expected a folder with open_clip_config.json and weights)")
    elif schema == "hf-hub":
        import huggingface_hub

        why = why_no_download()
        if why is not None:
            if not isinstance(huggingface_hub.try_to_load_from_cache(ident, "open_clip_config.json"), str):
                raise missing_weights(spec, hub_cache(), f"hf-hub {ident}, open_clip_config.json", why)
            return True
    return False


def weights_file_problem(path: str) -> str | None:
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


def load_failure(e: BaseException) -> str:
    """What torch.load / safetensors said, in one short line (torch's refusals run to paragraphs)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().split("\n\n", 1)[0]
        detail = " ".join(detail.split()).split(". ", 1)[0].rstrip(".")
        return f"torch.load(weights_only=True) refused it: {detail}"[:300]
    return " ".join(text.split())[:300] or type(e).__name__


def not_weights_only(spec: str, path: str, reason: str) -> KdpipeError:
    arch = spec.partition(":")[0]
    return KdpipeError(
        f"{path} is not a weights-only checkpoint ({reason}); kdpipe never unpickles objects: give {arch}:PATH "
        "a .safetensors file or a torch.save'd state dict holding tensors only (or OpenAI's TorchScript .pt)"
    )
