"""Stage ``vocabulary-features`` (only with ``distill.vocabulary`` set): the primary teacher's text
side, run ONCE over every name of the vocabulary (one instance per seed, as the teacher is).

Class-agnostic distillation (:mod:`kdpipe.distill.vocabulary`) scores each batch over a few of
these rows; like ``text-features`` for the dataset's classes, the teacher's text encoder is never
run again. It is a stage of its own, not part of ``text-features``, so runs without a vocabulary keep
every folder and fingerprint they had. Writes ``vocabulary_features.safetensors``: ``[V, D]``
L2-normalised rows with the names and the teacher's logit scale (the class-features format).
"""

from __future__ import annotations

import hashlib

from kdpipe.artefacts.class_features import write_class_features
from kdpipe.artefacts.run_layout import VOCABULARY_FEATURES, VOCABULARY_FILE, teacher_stem, vocabulary_path
from kdpipe.dist import leader_only
from kdpipe.errors import KdpipeError
from kdpipe.pipeline import register_stage
from kdpipe.settings import inputs, teachers


def _vocabulary(cfg) -> list[str]:
    from kdpipe.distill.vocabulary import read_vocabulary

    if len(teachers.member_names(cfg)) > 1:
        raise KdpipeError("distill.vocabulary distils from one teacher; leave teacher.members to one teacher or empty the vocabulary")
    return read_vocabulary(cfg["distill"].vocabulary)


def _identity(cfg) -> dict:
    """The names themselves (not the file's path): an edited file re-runs the stage."""
    return {"names": hashlib.sha256("\n".join(_vocabulary(cfg)).encode()).hexdigest()}


def _write(ctx) -> dict:
    from kdpipe.eval.class_features import compute_text_features
    from kdpipe.methods.io import load_method

    cfg = ctx.cfg
    names = _vocabulary(cfg)
    teacher, meta = load_method(teacher_stem(teachers.primary_upstream(ctx, "teacher")), device=inputs.device_of(cfg))
    if teacher.conditions_on_image:
        raise KdpipeError(f"distill.vocabulary needs class features computed once; the {meta['method']} teacher makes them per image")
    with ctx.progress(len(names), desc="vocabulary-features", unit="class") as bar:
        vf = compute_text_features(teacher, names, len(names), progress=bar)
    vf.meta = {"teacher": meta["method"], "teacher_backbone": meta["backbone"], "vocabulary": cfg["distill"].vocabulary, "seed": ctx.seed}
    write_class_features(vocabulary_path(ctx.dir), vf)
    ctx.log.info(f"{len(names)} vocabulary names x {vf.features.shape[1]} from the {meta['method']} teacher")
    return {"classes": len(names), "dim": int(vf.features.shape[1])}


@register_stage(
    VOCABULARY_FEATURES,
    deps=["teacher"],
    outputs=[VOCABULARY_FILE],
    seeded=True,
    identity=_identity,
    when=lambda cfg: bool(cfg["distill"].vocabulary),
    headline="classes",
    description="run the trained teacher's text side once over every name of distill.vocabulary",
)
def run(ctx) -> dict:
    # writes a shared file: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _write(ctx))
