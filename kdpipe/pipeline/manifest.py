"""A stage folder's bookkeeping: the manifest written last (what makes a stage done), its format
check, and the hashes of the outputs it records."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.io import read_json_or_none
from kdpipe.pipeline.hashing import digest, sha256_file

MANIFEST_FORMAT = "kdpipe-stage-manifest"
MANIFEST_VERSION = 1  # bump when manifests change incompatibly; older run dirs then fail clearly
MANIFEST = "manifest.json"
FAILED = "failed.json"
ATTEMPT = ".attempt.json"  # fingerprint of the last started attempt: decides whether ckpt/ is kept
LOG = "log.txt"
CKPT = "ckpt"
STAGE_LOCK = ".stage.lock"  # held by the process running the stage (kdpipe.pipeline.lock.StageLock)
# Files of the stage folder that are bookkeeping, not outputs (never hashed into the manifest).
_NOT_OUTPUTS = {MANIFEST, FAILED, ATTEMPT, LOG, STAGE_LOCK}


def library_versions() -> dict[str, str]:
    """Versions recorded in manifests (read from package metadata: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    import kdpipe

    out = {"kdpipe": kdpipe.__version__, "python": sys.version.split()[0]}
    for key, dist in (("torch", "torch"), ("open_clip", "open_clip_torch")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` on one line; only a runaway message is cut (status shows the reason whole)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ManifestVersionError(KdpipeError):
    pass


def check_format(data: dict, where: Path) -> None:
    version = data.get("format_version")
    if version != MANIFEST_VERSION:
        raise ManifestVersionError(
            f"{where} was written by kdpipe {data.get('versions', {}).get('kdpipe', data.get('kdpipe_version', '?'))} "
            f"(run-dir format {version}); this kdpipe reads format {MANIFEST_VERSION}: "
            f"use a new --run-dir or the kdpipe version that wrote it"
        )


def read_manifest(folder: Path) -> dict | None:
    """The stage's manifest, None when missing or corrupt; an incompatible format raises."""
    data = read_json_or_none(Path(folder) / MANIFEST)
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    check_format(data, Path(folder) / MANIFEST)
    if not isinstance(data.get("fingerprint"), str) or not isinstance(data.get("outputs"), dict):
        return None
    return data


def outputs_digest(folder: Path) -> str | None:
    """A hash of a done stage's outputs (what downstream manifests remember), None if not done."""
    try:
        manifest = read_manifest(folder)
    except ManifestVersionError:
        return None
    if manifest is None:
        return None
    return digest({k: v.get("sha256") for k, v in manifest["outputs"].items()})


def hash_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256, size and mtime of every file in the stage folder except checkpoints and bookkeeping."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or rel.parts[0] == CKPT or (len(rel.parts) == 1 and _is_bookkeeping(rel.name)):
            continue
        st = p.stat()
        out[rel.as_posix()] = {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _is_bookkeeping(name: str) -> bool:
    return name in _NOT_OUTPUTS or (name.startswith("log.rank") and name.endswith(".txt"))


def verify_outputs(folder: Path, recorded: dict[str, dict[str, Any]]) -> str:
    """'' when every recorded output is present and unchanged, else why not.

    A file whose size and mtime match the record is trusted without re-hashing (as make and DVC
    do), so ``status`` stays quick on large shard sets; anything touched is hashed again.
    """
    for rel, rec in recorded.items():
        p = Path(folder) / rel
        if not p.is_file():
            return f"output {rel} is missing"
        st = p.stat()
        if st.st_size != rec.get("size"):
            return f"output {rel} was modified"
        if st.st_mtime_ns != rec.get("mtime_ns") and sha256_file(p) != rec.get("sha256"):
            return f"output {rel} was modified"
    return ""


