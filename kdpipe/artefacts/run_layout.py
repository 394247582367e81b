"""Where a run directory keeps the models the stages hand each other and ``kdpipe classify`` loads.

The runner names a stage instance's folder ``STAGE[-MEMBER][-seedN]`` (``teacher-promptsrc-seed1``,
``baseline-coop``, ``distill``). The stages write these files with the names below and
:mod:`kdpipe.infer.runs` finds them with the same names, so the two cannot drift apart; it finds the
folders themselves by the instance names their manifests record, never by folder names.

A trained method is ``<stem>.safetensors`` (its learned state, what it is in the metadata) plus
``<stem>.json`` (the same meta and run facts, for people); see :func:`kdpipe.methods.io.save_method`.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdpipe.artefacts.class_features import IN_STAGE_FOLDER

# stage names, which start their folders' names
TEACHER = "teacher"
TEXT_FEATURES = "text-features"
DISTILL = "distill"
VOCABULARY_FEATURES = "vocabulary-features"
BASELINE = "baseline"

TEACHER_STEM = "teacher"
STUDENT_STEM = "student"
BASELINE_STEM = "method"
VOCABULARY_FILE = "vocabulary_features.safetensors"  # the vocabulary's rows, as class features
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


def vocabulary_path(stage_dir: str | os.PathLike) -> Path:
    """The vocabulary-features stage's rows (:mod:`kdpipe.artefacts.class_features` format)."""
    return Path(stage_dir) / VOCABULARY_FILE


def index_path(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / INDEX_FILE
