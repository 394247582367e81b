"""The teachers of a run: ``teacher.members`` (or ``[teacher.method]``), the first one the PRIMARY.

Each member is a teacher id: a method name (``promptsrc``), or a method name and a tag
(``promptsrc-l14``, ``promptsrc-b16``), so that two teachers of one method (other backbones or
budgets, each set in its own ``teacher.<id>`` table) can be ensembled. Each is trained by its own
``teacher:<id>`` stage instance (folder ``teacher-<id>-seed1``), with its own class features
(``text-features``) and teacher cache (``teacher-cache``). Those two families name
the primary's instance plainly (``text-features@seed1``, folder ``text-features-seed1``), as the
single-teacher pipeline always did, and the others by member (``text-features:zeroshot@seed1``):
a one-member run is today's run, folder for folder and fingerprint for fingerprint.

The primary's class features are the student's classifier (as in PromptKD), so the student's
projector maps into the primary teacher's embedding space (its text width).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kdpipe.errors import KdpipeError


TAG = re.compile(r"[A-Za-z0-9_]+")  # what may follow "<method>-" in a teacher id


@dataclass(frozen=True)
class TeacherMember:
    name: str  # the family member: the teacher's id
    method: str  # the prompt method it trains
    backbone: str  # its own backbone, or teacher.backbone


def method_of(teacher_id: str) -> str:
    """The method of a teacher id: ``promptsrc-b16`` -> ``promptsrc`` (method names have no ``-``)."""
    return teacher_id.partition("-")[0]


def member_names(cfg) -> list[str]:
    """The teachers' ids, primary first, checked to name prompt methods and to be listed once."""
    from kdpipe.settings.sections import check_methods

    t = cfg["teacher"]
    names = list(t.members) or [t.method]
    key = "teacher.members" if t.members else "teacher.method"
    bad = [n for n in names if "-" in n and not TAG.fullmatch(n.partition("-")[2])]
    if bad:
        raise KdpipeError(f"{key}: bad teacher id {bad[0]!r}; an id is a method name, or a method name, '-' and a tag of letters, digits or _")
    check_methods([method_of(n) for n in names], key)
    if len(set(names)) != len(names):
        raise KdpipeError(f"{key} lists a teacher twice: {names} (two teachers of one method need ids of their own: "
                          "promptsrc-l14, promptsrc-b16)")
    return names


def primary_name(cfg) -> str:
    return member_names(cfg)[0]


def members(cfg) -> list[TeacherMember]:
    return [TeacherMember(n, method_of(n), cfg.member("teacher", n).get("backbone") or cfg["teacher"].backbone)
            for n in member_names(cfg)]


def member_of_instance(instance: str, cfg) -> str:
    """The teacher an upstream instance name belongs to: its family member, the primary when plain."""
    return instance.split("@")[0].partition(":")[2] or primary_name(cfg)


def upstream_by_member(ctx, stage: str) -> dict[str, Path]:
    """Teacher name -> folder of each upstream instance of ``stage`` (``teacher``, ``text-features``,
    ``teacher-cache``) feeding ``ctx``, in ``teacher.members`` order."""
    found = {member_of_instance(n, ctx.cfg): Path(p) for n, p in ctx.inputs_of(stage).items()}
    order = member_names(ctx.cfg)
    missing = [m for m in order if m not in found]
    if missing:
        raise KdpipeError(f"stage {ctx.name} has no {stage} input for teacher(s) {', '.join(missing)}")
    return {m: found[m] for m in order}


def primary_upstream(ctx, stage: str) -> Path:
    """The folder of the PRIMARY teacher's instance of ``stage`` feeding ``ctx``."""
    return upstream_by_member(ctx, stage)[primary_name(ctx.cfg)]
