"""Stage ``teacher:<method>``: the prompted teacher (PromptSRC on ViT-L/14 by default), few-shot on
the training classes (base classes in base-to-novel mode), one instance per seed.

A one-member family named after ``teacher.method`` so that the ``teacher.<method>.*`` override
table is part of its fingerprint. Writes ``teacher.safetensors`` (learned prompts, meta inside) and
``teacher.json`` (the same meta plus seed, shots and training history).
"""

from __future__ import annotations

from typing import Any

from kdpipe.artefacts.run_layout import TEACHER, TEACHER_STEM, teacher_stem
from kdpipe.pipeline import register_stage
from kdpipe.stages import inputs
from kdpipe.stages.fewshot import stage_metrics, train_fewshot


def teacher_overrides(cfg) -> dict[str, Any]:
    """Method settings: the teacher section's batch/lr/epochs, then the ``teacher.<method>`` table."""
    t = cfg["teacher"]
    out = {k: getattr(t, k) for k in ("batch_size", "lr", "epochs") if getattr(t, k) is not None}
    out.update(cfg.member("teacher", t.method))
    return out


def _member(cfg) -> list[str]:
    from kdpipe.stages.sections import check_methods

    check_methods([cfg["teacher"].method], "teacher.method")
    return [cfg["teacher"].method]


@register_stage(
    TEACHER,
    reads=[
        "data.shots", "data.mode", "data.crop_scale",
        "teacher.backbone", "teacher.batch_size", "teacher.lr", "teacher.epochs", "teacher.{member}",
    ],
    outputs=[f"{TEACHER_STEM}.safetensors", f"{TEACHER_STEM}.json"],
    expand=_member,
    seeded=True,
    identity=inputs.source_identity,
    headline="train_loss",
    version=2,  # 2: OpenAI weights build QuickGELU (1 built open_clip 3's GELU for vit-b-16 & co.)
    description="train the prompted teacher few-shot on the base classes",
)
def run(ctx) -> dict:
    t = ctx.cfg["teacher"]
    facts = train_fewshot(
        ctx,
        method_name=ctx.member,
        backbone_spec=t.backbone,
        overrides=teacher_overrides(ctx.cfg),
        seed=ctx.seed,
        out_stem=teacher_stem(ctx.dir),
        role="teacher",
        checkpoint_every=t.checkpoint_every,
    )
    return stage_metrics(facts)
