"""Names people read in report titles and tables (the full spec stays in manifests and metrics.json)."""

from __future__ import annotations

from pathlib import PurePath

from kdpipe.clip.backbones import WEIGHT_SUFFIXES


def _is_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith(WEIGHT_SUFFIXES)


def _short(path: str) -> str:
    p = PurePath(path.rstrip("/\\"))
    return p.stem if p.suffix in WEIGHT_SUFFIXES else p.name


def backbone_label(spec: str) -> str:
    """The short name of a backbone spec: a local checkpoint's file stem (``world-l``), the
    architecture of ``ARCH:/path/to/weights`` (``ViT-B-16``), a ``local-dir:`` folder's name.
    Specs without a local path (``vit-b-16``, ``ViT-B-16:openai``, ``hf-hub:org/repo``) are short
    already and stay as given. Only the text is looked at: a report must not depend on files still
    being where the run found them."""
    spec = spec.strip()
    head, sep, tail = spec.partition(":")
    if sep and head == "local-dir":
        return _short(tail) or spec
    if sep and head == "hf-hub":
        return spec
    if sep and head and not _is_path(head):  # ARCH:TAG or ARCH:PATH
        return head if _is_path(tail) else spec
    return _short(spec) if _is_path(spec) else spec
