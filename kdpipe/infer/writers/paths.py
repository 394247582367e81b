"""The files kdpipe keeps beside a classify output ``OUT``: its meta, its skipped list, its ``--parts``."""

from __future__ import annotations

from pathlib import Path


def part_path(out: Path, part: int, parts: int) -> Path:
    """``--parts``: part ``part`` of ``parts`` beside ``out``, same format (``x.part-00001-of-00004.jsonl``)."""
    return out.with_name(f"{out.stem}.part-{part:05d}-of-{parts:05d}{out.suffix}")


def part_paths(out: Path) -> dict[int, list[Path]]:
    """Part files of any count found beside ``out``, by their count (resume / refusal checks)."""
    found: dict[int, list[Path]] = {}
    for p in sorted(out.parent.glob(f"{out.stem}.part-*-of-*{out.suffix}")):
        try:
            found.setdefault(int(p.stem.rsplit("-of-", 1)[1]), []).append(p)
        except ValueError:
            continue
    return found


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def skipped_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.jsonl")
