"""Stage ``teacher:<method>``: the prompted teacher (PromptSRC on ViT-L/14 by default), few-shot on
the training classes (base classes in base-to-novel mode), one instance per seed.

A family with one member per teacher of :mod:`kdpipe.settings.teachers` (``teacher.members``, else
``teacher.method``), so that the ``teacher.<method>.*`` override table (the member's own
``backbone`` included) is part of that member's fingerprint only. Writes ``teacher.safetensors`` (learned prompts, meta inside) and
``teacher.json`` (the same meta plus seed, shots and training history).
"""

from __future__ import annotations

from typing import Any

from kdpipe.artefacts.run_layout import TEACHER, TEACHER_STEM, teacher_stem
from kdpipe.pipeline import register_stage
from kdpipe.settings import inputs, teachers
from kdpipe.settings.sections import TEACHER_MEMBER_KEYS
from kdpipe.train.fewshot import stage_metrics, train_fewshot


def teacher_overrides(cfg, method: str | None = None) -> dict[str, Any]:
    """Method settings of teacher ``method`` (default: the primary): the teacher section's
    batch/lr/epochs, then the ``teacher.<method>`` table (less the teacher's own ``backbone``)."""
    t = cfg["teacher"]
    out = {k: getattr(t, k) for k in ("batch_size", "lr", "epochs") if getattr(t, k) is not None}
    table = cfg.member("teacher", method or teachers.primary_name(cfg))
    out.update({k: v for k, v in table.items() if k not in TEACHER_MEMBER_KEYS})
    return out


@register_stage(
    TEACHER,
    reads=[
        "data.shots", "data.mode", "data.crop_scale",
        "teacher.backbone", "teacher.batch_size", "teacher.lr", "teacher.epochs", "teacher.{member}",
    ],
    outputs=[f"{TEACHER_STEM}.safetensors", f"{TEACHER_STEM}.json"],
    expand=teachers.member_names,
    seeded=True,
    identity=inputs.source_identity,
    headline="train_loss",
    version=2,  # 2: OpenAI weights build QuickGELU (1 built open_clip 3's GELU for vit-b-16 & co.)
    description="train the prompted teacher few-shot on the base classes",
)
def run(ctx) -> dict:
    t = ctx.cfg["teacher"]
    member = next(m for m in teachers.members(ctx.cfg) if m.name == ctx.member)
    facts = train_fewshot(
        ctx,
        method_name=member.method,
        backbone_spec=member.backbone,
        overrides=teacher_overrides(ctx.cfg, ctx.member),
        seed=ctx.seed,
        out_stem=teacher_stem(ctx.dir),
        role="teacher",
        checkpoint_every=t.checkpoint_every,
    )
    return stage_metrics(facts)
