"""Stage ``text-features``: the trained teacher's text side, run ONCE over every class name.

Writes (one instance per seed) ``text_features.safetensors``: ``features`` ``[C, D]`` (L2-normalised
rows, base classes first), with the class names, the teacher's logit scale and the number of base
classes in its metadata, plus ``classes.index`` (a FAISS inner-product index over the rows, with its
``.json`` sidecar) for ``kdpipe classify``. In cross-dataset mode every class counts as base. Distillation and evaluation score against these rows; the
teacher's text encoder is never run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.dag import register_stage
from kdpipe.errors import KdpipeError
from kdpipe.stages import common
from kdpipe.stages.outputs import read_tensors, write_tensors

FEATURES_FILE = "text_features.safetensors"
INDEX_FILE = "classes.index"


@dataclass
class TextFeatures:
    features: "object"  # torch.Tensor [C, D], float32, unit rows
    classnames: list[str]
    logit_scale: float  # the teacher's logit_scale.exp()
    num_base: int  # rows [:num_base] are the base classes
    meta: dict = field(default_factory=dict)


def save_text_features(path: str | Path, tf: TextFeatures) -> Path:
    meta = {
        "classnames": tf.classnames,
        "logit_scale": tf.logit_scale,
        "num_base": tf.num_base,
        **{k: v for k, v in tf.meta.items() if k not in ("classnames", "logit_scale", "num_base")},
    }
    return write_tensors(path, {"features": tf.features.float()}, meta)


def load_text_features(path: str | Path) -> TextFeatures:
    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"class features {path} not found; run the text-features stage first (kdpipe run text-features)")
    try:
        tensors, meta = read_tensors(path)
        tf = TextFeatures(tensors["features"], meta.pop("classnames"), float(meta.pop("logit_scale")), int(meta.pop("num_base")), meta)
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise KdpipeError(f"{path} is not a kdpipe class-feature file ({type(e).__name__}: {e})") from None
    if tf.features.dim() != 2 or tf.features.shape[0] != len(tf.classnames):
        raise KdpipeError(f"{path}: {tuple(tf.features.shape)} features for {len(tf.classnames)} class names")
    return tf


def features_path(stage_dir: str | Path) -> Path:
    return Path(stage_dir) / FEATURES_FILE


def compute_text_features(teacher, classnames: list[str], num_base: int) -> TextFeatures:
    """Run the teacher's (prompted) text side over ``classnames`` once, in fp32, without gradients."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), torch.autocast(teacher.device.type, enabled=False):
        feats = F.normalize(teacher.class_features(classnames).float(), dim=-1).cpu()
    return TextFeatures(feats, list(classnames), float(teacher.clip.logit_scale), num_base)


def _write_text_features(ctx) -> dict:
    from kdpipe.eval.metrics import base_count
    from kdpipe.infer.index import ClassIndex
    from kdpipe.stages.teacher import teacher_stem

    cfg = ctx.cfg
    splits = common.load_splits(cfg)
    classnames = list(splits.classnames)  # sorted labels: base classes first, then novel
    num_base = base_count(len(classnames)) if cfg["data"].mode == "base2novel" else len(classnames)
    # the target's name: a hand-template teacher (zero-shot) prompts with the target's templates
    teacher, meta = common.load_method(teacher_stem(common.upstream(ctx, "teacher")), device=common.device_of(cfg), dataset=splits.name)
    tf = compute_text_features(teacher, classnames, num_base)
    tf.meta = {"teacher": meta["method"], "teacher_backbone": meta["backbone"], "dataset": cfg["data"].dataset, "seed": ctx.seed}
    save_text_features(ctx.dir / FEATURES_FILE, tf)
    ClassIndex.build(tf.features, "flat").save(ctx.dir / INDEX_FILE)
    ctx.log.info(
        f"{len(classnames)} classes ({num_base} base) x {tf.features.shape[1]} from the {meta['method']} teacher, "
        f"logit scale {tf.logit_scale:.2f}"
    )
    return {"classes": len(classnames), "base_classes": num_base, "dim": int(tf.features.shape[1])}


@register_stage(
    "text-features",
    reads=["data.mode"],
    deps=["teacher"],
    outputs=[FEATURES_FILE, INDEX_FILE],
    seeded=True,
    identity=common.data_identity,
    headline="classes",
    description="run the trained teacher's text side once over every class name",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return common.leader_only(lambda: _write_text_features(ctx))
