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

from kdpipe.artefacts.evaluation import METRICS, write_evaluation
from kdpipe.artefacts.run_layout import baseline_stem, features_path, student_stem, teacher_stem
from kdpipe.artefacts.shards_info import INDUCTIVE, TRANSDUCTIVE, USER_SHARDS, protocol_of
from kdpipe.dist import leader_only
from kdpipe.eval.scoring import Scorer, collect_logits, features_scorer, method_scorer, scorers_for_classes, teacher_scorer
from kdpipe.io import read_json
from kdpipe.pipeline import register_stage
from kdpipe.errors import KdpipeError
from kdpipe.settings import inputs, teachers


def _evaluate(ctx) -> dict:
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.clip import load_backbone
    from kdpipe.data import load_dataset
    from kdpipe.distill.heldout import heldout_notes
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
    protocol = protocol_of(inputs.upstream(ctx, "shards"))
    rows = _score(ctx, scorers, items, splits.name, len(tf.classnames) if cross else tf.num_base, cross, protocol)
    for name in targets:
        target = load_dataset(name, inputs.data_root(cfg))
        if not target.split(e.split):
            raise KdpipeError(f"the {e.split} split of evaluate.targets dataset {target.name} is empty; nothing to score it on")
        target_scorers = scorers_for_classes(teacher, student, baseline_methods, list(target.classnames))
        rows += _score(ctx, target_scorers, target.split(e.split), target.name, len(target.classnames), True, protocol)
    notes.append(protocol_note(cfg, protocol))
    notes += heldout_notes(smeta, ctx.seed)  # which epoch the student is, and the teacher gate's two numbers
    write_evaluation(ctx.dir, {
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
PROTOCOL_NOTES = {TRANSDUCTIVE: transductive_note, INDUCTIVE: inductive_note, USER_SHARDS: lambda cfg: USER_SHARDS_NOTE}


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
