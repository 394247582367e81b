"""Stage ``evaluate``: base / novel / HM on the test split for the teacher, the student and every
baseline (one instance per seed); in cross-dataset mode, accuracy over all classes.

Every method scores the test images against ALL classes (base rows first); base accuracy is read
on base-class images over the base columns ``[:ceil(C/2)]``, novel on novel-class images over the
rest. The student (it has no text side) and the teacher score against the class features the
``text-features`` stage stored: the teacher's text side computed them once there and is not run
again here, unless the teacher conditions its class features on each image (CoCoOp), which no
stored rows can stand for. Baselines encode their own class names. Writes ``metrics.json``:
``rows`` of ``{method, role, backbone, dataset, seed, base, novel, hm, accuracy, protocol}`` in
percent, and notes (what the student's unlabeled set held). ``protocol`` on the student's rows is
the shards stage's: ``transductive`` (novel or target images in the set), ``inductive`` or
``user shards``.

In cross-dataset mode ``evaluate.targets`` names more datasets, each scored on all its classes
with the same trained methods (domain generalisation: an ImageNet teacher and student, scored on
ImageNet-V2, -Sketch, -A and -R). The teacher's text side encodes each target's class names once,
and the student scores against those rows, as against the stored ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kdpipe.artefacts.run_layout import baseline_stem, features_path, student_stem, teacher_stem
from kdpipe.dist import leader_only, worker_init
from kdpipe.io import read_json, write_json
from kdpipe.pipeline import register_stage
from kdpipe.errors import KdpipeError
from kdpipe.stages import inputs, teachers

METRICS = "metrics.json"


@dataclass
class Scorer:
    """One method to evaluate: ``logits(images) -> [B, C]`` over all classes, base first."""

    method: str
    role: str  # teacher | student | baseline
    backbone: Any  # kdpipe.clip.Backbone (its transform decides which images it sees)
    logits: Callable


def features_scorer(method, role: str, class_features) -> Scorer:
    """``method`` scoring against given class features ``[C, D]`` (moved to its device once)."""
    feats = class_features.to(method.device)
    return Scorer(method.name, role, method.backbone, lambda images: method.logits(images, class_features=feats))


def method_scorer(method, role: str, classnames: list[str]) -> Scorer:
    """``method`` scoring with its own text side: class features computed once for text methods,
    per batch for image-conditioned ones (CoCoOp)."""
    import torch

    if method.conditions_on_image:
        return Scorer(method.name, role, method.backbone, lambda images: method.logits(images, classnames=classnames))
    with torch.no_grad(), torch.autocast(method.device.type, enabled=False):
        feats = method.class_features(classnames).float()
    return features_scorer(method, role, feats)


def teacher_scorer(teacher, tf) -> Scorer:
    """The teacher against the rows its text side gave in ``text-features`` (``tf``, a
    :class:`~kdpipe.artefacts.class_features.ClassFeatures`): the same numbers without a second text
    pass. Its own logit scale applies, the one stored with the rows."""
    if teacher.conditions_on_image:
        return method_scorer(teacher, "teacher", tf.classnames)
    return features_scorer(teacher, "teacher", tf.features)


def collect_logits(scorers: list[Scorer], items, batch_size: int, workers: int, device, amp: bool, progress=None):
    """Run every scorer over ``items``; methods sharing a preprocessing share one decoding pass."""
    import torch
    from torch.utils.data import DataLoader

    from kdpipe.data import ImageDataset
    from kdpipe.data.transforms import build_transform
    from kdpipe.train import autocast

    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(scorers):
        b = s.backbone
        groups.setdefault((b.dims.image_size, tuple(b.mean), tuple(b.std)), []).append(i)
    logits: list[list] = [[] for _ in scorers]
    labels_out = None
    for (size, mean, std), members in groups.items():
        dataset = ImageDataset(items, build_transform(False, size, mean, std))
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
            worker_init_fn=worker_init if workers else None, pin_memory=torch.cuda.is_available(),
        )
        labels = []
        with torch.no_grad():
            for images, y in loader:
                images = images.to(device, non_blocking=True)
                with autocast(device, amp):
                    for i in members:
                        logits[i].append(scorers[i].logits(images).float().cpu())
                labels.append(y)
                if progress is not None:
                    progress(len(y))
        if dataset.skipped:
            raise KdpipeError(f"{len(dataset.skipped)} test images could not be read (first: {dataset.skipped[0][0]}); fix the dataset so every method is scored on the same images")
        labels_out = torch.cat(labels)
    return [torch.cat(chunks) for chunks in logits], labels_out


def _evaluate(ctx) -> dict:
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.clip import load_backbone
    from kdpipe.data import load_dataset
    from kdpipe.methods.io import load_method

    cfg = ctx.cfg
    device = inputs.device_of(cfg)
    splits = inputs.load_splits(cfg)
    items = splits.split(cfg["evaluate"].split)
    if not items:
        raise KdpipeError(f"the {cfg['evaluate'].split} split of {splits.name} is empty; nothing to evaluate")
    tf = read_class_features(features_path(teachers.primary_upstream(ctx, "text-features")))
    if list(tf.classnames) != list(splits.classnames):
        raise KdpipeError("the stored class features name other classes than the dataset; re-run text-features")
    cross = cfg["data"].mode == "cross"

    targets = list(cfg["evaluate"].targets)
    if targets and not cross:
        raise KdpipeError("evaluate.targets scores other datasets on all their classes; it needs data.mode = cross (the cross-dataset recipe)")

    teacher, tmeta = load_method(teacher_stem(teachers.primary_upstream(ctx, "teacher")), device=device, dataset=splits.name)
    smeta = read_json(student_stem(inputs.upstream(ctx, "distill")).with_suffix(".json"))
    student_bb = load_backbone(smeta["backbone"], device=device)
    student, _ = load_method(student_stem(inputs.upstream(ctx, "distill")), device=device, backbone=student_bb)
    scorers = [teacher_scorer(teacher, tf), features_scorer(student, "student", tf.features)]
    order = list(cfg["baselines"].methods)
    baselines = [(read_json(baseline_stem(f).with_suffix(".json")), f) for f in set(ctx.inputs_of("baseline").values())]
    notes = [n for n in (shots_note("teacher", tmeta), *(shots_note("baseline", m) for m, _ in baselines)) if n]
    baseline_methods = []
    for meta, folder in sorted(baselines, key=lambda mf: order.index(mf[0]["method"]) if mf[0]["method"] in order else len(order)):
        bb = student_bb if meta["backbone"] == student_bb.spec else None
        method, _ = load_method(baseline_stem(folder), device=device, backbone=bb, dataset=splits.name)
        baseline_methods.append(method)
        scorers.append(method_scorer(method, "baseline", tf.classnames))

    e = cfg["evaluate"]
    protocol = student_protocol(inputs.upstream(ctx, "shards"))
    rows = _score(ctx, scorers, items, splits.name, len(tf.classnames) if cross else tf.num_base, cross, protocol)
    for name in targets:
        target = load_dataset(name, inputs.data_root(cfg))
        if not target.split(e.split):
            raise KdpipeError(f"the {e.split} split of evaluate.targets dataset {target.name} is empty; nothing to score it on")
        target_scorers = scorers_for_classes(teacher, student, baseline_methods, list(target.classnames))
        rows += _score(ctx, target_scorers, target.split(e.split), target.name, len(target.classnames), True, protocol)
    notes.append(protocol_note(cfg, protocol))
    write_json(ctx.dir / METRICS, {
        "split": e.split, "mode": cfg["data"].mode, "images": len(items), "classes": len(tf.classnames),
        "base_classes": tf.num_base, "source": cfg["data"].train_dataset, "targets": targets,
        "rows": [r.to_dict() for r in rows], "notes": notes,
    })
    # one score per method: HM in base-to-novel mode, all-class accuracy in cross-dataset mode
    key = "accuracy" if cross else "hm"
    own = [r for r in rows if r.dataset == splits.name]
    by_role = {r.role: getattr(r, key) for r in own if r.role != "baseline"}
    return {"score": key, "student": by_role["student"], "teacher": by_role["teacher"],
            **{r.method: getattr(r, key) for r in own if r.role == "baseline"}}


def _score(ctx, scorers: list[Scorer], items, dataset: str, num_base: int, cross: bool, protocol: str) -> list:
    """One row per scorer on ``items`` of ``dataset`` (all-class accuracy only when ``cross``)."""
    from kdpipe.eval.metrics import MetricRow, split_accuracy

    cfg, e = ctx.cfg, ctx.cfg["evaluate"]
    groups = len({(s.backbone.dims.image_size, tuple(s.backbone.mean), tuple(s.backbone.std)) for s in scorers})
    with ctx.progress(len(items) * groups, desc=f"evaluate {len(scorers)} methods on {dataset}", unit="image") as bar:
        all_logits, labels = collect_logits(
            scorers, items, e.batch_size, cfg["data"].workers, inputs.device_of(cfg), cfg["run"].amp,
            progress=lambda n: bar.update(n, images=n),
        )
    rows = []
    for s, logits in zip(scorers, all_logits):
        m = split_accuracy(logits, labels, num_base=num_base)
        if cross:
            m.update(base=None, novel=None, hm=None)
        rows.append(MetricRow(s.method, s.role, s.backbone.spec, dataset, ctx.seed, m["base"], m["novel"], m["hm"], m["accuracy"],
                              protocol=protocol if s.role == "student" else None))
        ctx.log.info(
            f"{dataset:12s} {s.role:8s} {s.method:10s} base {_pct(m['base'])} novel {_pct(m['novel'])} HM {_pct(m['hm'])} all {_pct(m['accuracy'])}"
        )
    return rows


def scorers_for_classes(teacher, student, baselines: list, classnames: list[str]) -> list[Scorer]:
    """Teacher, student and baselines scoring over another dataset's ``classnames``: the teacher's
    text side encodes them once (as ``text-features`` does for the run's own dataset) and the
    student, which has no text side, scores against those rows."""
    feats = class_features_for(teacher, classnames)
    return [features_scorer(teacher, "teacher", feats), features_scorer(student, "student", feats),
            *(method_scorer(b, "baseline", classnames) for b in baselines)]


def class_features_for(teacher, classnames: list[str]):
    """``[C, D]`` rows of the teacher's text side over ``classnames``, made as ``text-features``
    makes the stored ones (so a class shared with the run's dataset gets the very same row)."""
    from kdpipe.stages.text_features import compute_text_features

    if teacher.conditions_on_image:
        raise KdpipeError(f"evaluate.targets needs class features the student can score against; the {teacher.name} teacher "
                          "makes them per image, so pick a teacher.method without an image-conditioned text side")
    return compute_text_features(teacher, classnames, len(classnames)).features


def student_protocol(shards_dir: Path) -> str:
    """The protocol of the student's unlabeled set, from the shards stage's ``shards.json`` (sets
    written before it named one: transductive when built, the user's shards otherwise)."""
    from kdpipe.stages.shards import INFO, TRANSDUCTIVE, USER_SHARDS

    info = read_json(Path(shards_dir) / INFO)
    return info.get("protocol") or (TRANSDUCTIVE if info.get("transductive") else USER_SHARDS)


TRANSDUCTIVE_NOTE = (
    "the student was distilled on unlabeled train images of ALL classes, base and novel "
    "(PromptKD's transductive setting); teacher and baselines saw labelled base classes only"
)
TRANSDUCTIVE_NOTE_CROSS = (
    "the student was distilled on unlabeled train images of every class of the evaluated dataset "
    "(PromptKD's transductive setting); teacher and baselines learned few-shot from {source}"
)


INDUCTIVE_NOTE = (
    "the inductive student was distilled on unlabeled train images of the base classes only "
    "(shards.unlabeled = base): no novel-class image reached distillation"
)
INDUCTIVE_NOTE_CROSS = (
    "the inductive student was distilled on unlabeled train images of {source} only, the dataset "
    "teacher and baselines learned from: no image of an evaluated target reached distillation"
)
USER_SHARDS_NOTE = (
    "the student was distilled on the user's own shards (shards.unlabeled); kdpipe cannot tell "
    "whether they hold novel-class or target images, so its rows are labelled 'user shards'"
)


def transductive_note(cfg) -> str:
    d = cfg["data"]
    return TRANSDUCTIVE_NOTE if d.mode == "base2novel" else TRANSDUCTIVE_NOTE_CROSS.format(source=d.train_dataset)


def inductive_note(cfg) -> str:
    d = cfg["data"]
    return INDUCTIVE_NOTE if d.mode == "base2novel" else INDUCTIVE_NOTE_CROSS.format(source=d.train_dataset)


# protocol -> the note the report prints under its table
PROTOCOL_NOTES = {"transductive": transductive_note, "inductive": inductive_note, "user shards": lambda cfg: USER_SHARDS_NOTE}


def protocol_note(cfg, protocol: str) -> str:
    return PROTOCOL_NOTES[protocol](cfg)


def shots_note(role: str, meta: dict) -> str | None:
    """Say so when a few-shot method trained on fewer images per class than ``data.shots`` asked."""
    want, lo, hi = meta.get("shots_requested"), meta.get("shots"), meta.get("shots_max", meta.get("shots"))
    if not want or lo is None or lo >= want:
        return None
    have = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{role} {meta['method']} trained on {have} images per class, fewer than data.shots = {want} for some classes"


def _pct(v) -> str:
    return "  -  " if v is None else f"{v:5.1f}"


def read_rows(stage_dir: str | Path) -> tuple[list, list[str]]:
    from kdpipe.eval.metrics import MetricRow

    data = read_json(Path(stage_dir) / METRICS)
    return [MetricRow(**r) for r in data["rows"]], list(data.get("notes", []))


def _identity(cfg) -> dict:
    """The evaluated dataset's items, and each ``evaluate.targets`` dataset's."""
    identity = inputs.data_identity(cfg)
    targets = list(cfg["evaluate"].targets)
    # the same cached, root-independent identity every dataset-reading stage uses
    return {**identity, "targets": [inputs._cached_identity(t, inputs.data_root(cfg)) for t in targets]} if targets else identity


@register_stage(
    "evaluate",
    reads=["data.mode", "data.source", "evaluate.split", "evaluate.targets", "baselines.methods"],
    # shards: the protocol of the student's unlabeled set, written on its rows
    deps=["teacher", "text-features", "distill", "baseline", "shards"],
    outputs=[METRICS],
    seeded=True,
    identity=_identity,
    headline="student",
    description="base / novel / HM of teacher, student and baselines on the test split",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _evaluate(ctx))
