"""Where a run directory keeps the models the stages hand each other and ``kdpipe classify`` loads.

The runner names a stage instance's folder ``STAGE[-MEMBER][-seedN]`` (``teacher-promptsrc-seed1``,
``baseline-coop``, ``distill``). The stages write these files with the names below and
:mod:`kdpipe.infer.runs` finds them with the same names, so the two cannot drift apart.

A trained method is ``<stem>.safetensors`` (its learned state, what it is in the metadata) plus
``<stem>.json`` (the same meta and run facts, for people); see :func:`kdpipe.methods.io.save_method`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kdpipe.artefacts.class_features import IN_STAGE_FOLDER

# stage names, which start their folders' names
TEACHER = "teacher"
TEXT_FEATURES = "text-features"
DISTILL = "distill"
BASELINE = "baseline"

TEACHER_STEM = "teacher"
STUDENT_STEM = "student"
BASELINE_STEM = "method"
INDEX_FILE = "classes.index"  # kdpipe.infer.index.ClassIndex over those rows (+ its .json sidecar)


def teacher_stem(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / TEACHER_STEM


def student_stem(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / STUDENT_STEM


def baseline_stem(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / BASELINE_STEM


def features_path(stage_dir: str | os.PathLike) -> Path:
    """The text-features stage's class features (:mod:`kdpipe.artefacts.class_features`)."""
    return Path(stage_dir) / IN_STAGE_FOLDER


def index_path(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / INDEX_FILE


# ---- finding stage folders: patterns of the name before the optional -seedN ------------------------
_MEMBER = r"[A-Za-z0-9_]+"  # a family member here is a method name
TEACHER_FOLDER = rf"{re.escape(TEACHER)}-{_MEMBER}"  # a one-member family named after teacher.method
STUDENT_FOLDER = re.escape(DISTILL)
TEXT_FEATURES_FOLDER = re.escape(TEXT_FEATURES)


def baseline_folder(method: str) -> str:
    return re.escape(f"{BASELINE}-{method}")


def is_method_name(name: str) -> bool:
    """Whether ``name`` can be a family member in a folder name (what :func:`baseline_folder` accepts)."""
    return re.fullmatch(_MEMBER, name) is not None


def folder_seed(pattern: str, folder_name: str) -> tuple[bool, int | None]:
    """(whether ``folder_name`` is an instance of ``pattern``, its seed or None when unseeded)."""
    m = re.fullmatch(rf"(?:{pattern})(?:-seed(\d+))?", folder_name)
    if m is None:
        return False, None
    return True, int(m.group(1)) if m.group(1) else None
