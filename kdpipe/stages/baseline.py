"""Stage family ``baseline:<method>``: comparison rows, each a registered method trained few-shot on
the training classes on the STUDENT backbone, one instance per seed (``zeroshot`` trains nothing).

Members come from ``baselines.methods``; ``baselines.<method>.*`` tables override that method's
reference settings (and are part of that member's fingerprint only).
"""

from __future__ import annotations

from kdpipe.artefacts.run_layout import BASELINE, BASELINE_STEM, baseline_stem
from kdpipe.pipeline import register_stage
from kdpipe.settings import inputs
from kdpipe.train.fewshot import stage_metrics, train_fewshot


def _members(cfg) -> list[str]:
    from kdpipe.settings.sections import check_methods

    methods = list(cfg["baselines"].methods)
    check_methods(methods, "baselines.methods")
    return methods


@register_stage(
    BASELINE,
    reads=["data.shots", "data.mode", "data.crop_scale", "student.backbone", "baselines.{member}"],
    outputs=[f"{BASELINE_STEM}.safetensors", f"{BASELINE_STEM}.json"],
    expand=_members,
    seeded=True,
    identity=inputs.source_identity,
    headline="train_loss",
    version=2,  # 2: OpenAI weights build QuickGELU; IVLP's own reference defaults (2+2 ctx, depth 12)
    description="train a baseline prompt method few-shot on the student backbone",
)
def run(ctx) -> dict:
    facts = train_fewshot(
        ctx,
        method_name=ctx.member,
        backbone_spec=ctx.cfg["student"].backbone,
        overrides=ctx.cfg.member("baselines", ctx.member),
        seed=ctx.seed,
        out_stem=baseline_stem(ctx.dir),
        role="baseline",
        checkpoint_every=ctx.cfg["baselines"].checkpoint_every,
    )
    return stage_metrics(facts)
