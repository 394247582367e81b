"""The teachers of a run: ``teacher.members`` (or ``[teacher.method]``), the first one the PRIMARY.

Each member is a method name, trained by its own ``teacher:<method>`` stage instance, with its own
class features (``text-features``) and teacher cache (``teacher-cache``). Those two families name
the primary's instance plainly (``text-features@seed1``, folder ``text-features-seed1``), as the
single-teacher pipeline always did, and the others by member (``text-features:zeroshot@seed1``):
a one-member run is today's run, folder for folder and fingerprint for fingerprint.

The primary's class features are the student's classifier (as in PromptKD), so the student's
projector maps into the primary teacher's embedding space (its text width).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdpipe.errors import KdpipeError


@dataclass(frozen=True)
class TeacherMember:
    name: str  # the family member: the method's name
    backbone: str  # its own backbone, or teacher.backbone


def member_names(cfg) -> list[str]:
    """The teachers' method names, primary first, checked to be prompt methods listed once."""
    from kdpipe.settings.sections import check_methods

    t = cfg["teacher"]
    names = list(t.members) or [t.method]
    key = "teacher.members" if t.members else "teacher.method"
    check_methods(names, key)
    if len(set(names)) != len(names):
        raise KdpipeError(f"{key} lists a teacher twice: {names} (one teacher per method)")
    return names


def primary_name(cfg) -> str:
    return member_names(cfg)[0]


def members(cfg) -> list[TeacherMember]:
    return [TeacherMember(n, cfg.member("teacher", n).get("backbone") or cfg["teacher"].backbone) for n in member_names(cfg)]


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
