"""Stage ``text-features``: the trained teacher's text side, run ONCE over every class name.

A family with one member per teacher (:mod:`kdpipe.settings.teachers`): each teacher's rows live in
its own embedding space. The primary teacher's instance keeps the plain name (``text-features@seed1``)
and its rows are the student's classifier; ``text-features:<method>`` holds another teacher's.

Writes (one instance per seed) ``text_features.safetensors``: ``features`` ``[C, D]`` (L2-normalised
rows, base classes first), with the class names, the teacher's logit scale and the number of base
classes in its metadata, plus ``classes.index`` (a FAISS inner-product index over the rows, with its
``.json`` sidecar) for ``kdpipe classify``. In cross-dataset mode every class counts as base.
Distillation and evaluation score against these rows; the teacher's text encoder is never run
again. The file format is :mod:`kdpipe.artefacts.class_features`; the names are
:mod:`kdpipe.artefacts.run_layout`'s.
"""

from __future__ import annotations

from kdpipe.artefacts.class_features import IN_STAGE_FOLDER, write_class_features
from kdpipe.artefacts.run_layout import INDEX_FILE, TEXT_FEATURES, features_path, index_path, teacher_stem
from kdpipe.dist import leader_only
from kdpipe.pipeline import register_stage
from kdpipe.settings import inputs, teachers


def _write_text_features(ctx) -> dict:
    from kdpipe.eval.class_features import compute_text_features
    from kdpipe.eval.metrics import base_count
    from kdpipe.infer.index import ClassIndex
    from kdpipe.methods.io import load_method

    cfg = ctx.cfg
    splits = inputs.load_splits(cfg)
    classnames = list(splits.classnames)  # sorted labels: base classes first, then novel
    num_base = base_count(len(classnames)) if cfg["data"].mode == "base2novel" else len(classnames)
    # the target's name: a hand-template teacher (zero-shot) prompts with the target's templates
    teacher, meta = load_method(teacher_stem(inputs.upstream(ctx, "teacher")), device=inputs.device_of(cfg), dataset=splits.name)
    with ctx.progress(len(classnames), desc="text-features", unit="class") as bar:
        tf = compute_text_features(teacher, classnames, num_base, progress=bar)
    tf.meta = {"teacher": meta["method"], "teacher_backbone": meta["backbone"], "dataset": cfg["data"].dataset, "seed": ctx.seed}
    write_class_features(features_path(ctx.dir), tf)
    ClassIndex.build(tf.features, "flat").save(index_path(ctx.dir))
    ctx.log.info(
        f"{len(classnames)} classes ({num_base} base) x {tf.features.shape[1]} from the {meta['method']} teacher, "
        f"logit scale {tf.logit_scale:.2f}"
    )
    return {"classes": len(classnames), "base_classes": num_base, "dim": int(tf.features.shape[1])}


@register_stage(
    TEXT_FEATURES,
    reads=["data.mode"],
    deps=["teacher:{member}"],
    outputs=[IN_STAGE_FOLDER, INDEX_FILE],
    expand=teachers.member_names,
    plain=teachers.primary_name,
    seeded=True,
    identity=inputs.data_identity,
    headline="classes",
    description="run the trained teacher's text side once over every class name",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _write_text_features(ctx))
