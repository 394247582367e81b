"""Stage ``distill``: the PromptKD student learns from the teacher on unlabeled images (one per seed).

Per step, the same augmented batch from the shard stream goes to the frozen teacher's image tower
(through a :class:`~kdpipe.distill.TeacherFeatures` source) and to the student; the loss is the KL
of §6 against the class features the ``text-features`` stage stored. The teacher's text encoder is
never called here. Training runs in :func:`kdpipe.train.fit`: checkpoints in ``ctx.ckpt_dir``
every ``distill.checkpoint_every`` steps and each epoch, resumable mid-epoch, with the same result
as an uninterrupted run. Each process reads only its own shards (``RANK``/``WORLD_SIZE`` from
torchrun), so the loop is unchanged under DDP.

Writes ``student.safetensors`` / ``student.json`` (prompts + projector) and ``curves.json``: per
epoch the mean training loss and, on the held-out slice of the unlabeled stream, the student-teacher
top-1 agreement and KD loss (epoch 0 = the untrained student).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

from kdpipe.artefacts.distill_curves import CURVES, write_curves
from kdpipe.artefacts.run_layout import DISTILL, STUDENT_STEM, features_path, student_stem, teacher_stem, vocabulary_path
from kdpipe.artefacts.shards_info import read_shards_info
from kdpipe.dist import rank_world
from kdpipe.distill.agreement_log import AgreementLog
from kdpipe.distill.batches import filtered_batches, holdout_exclusion, in_step_with_other_ranks
from kdpipe.pipeline import register_stage
from kdpipe.errors import KdpipeError
from kdpipe.eval.labels import backbone_label
from kdpipe.progress import step_reporter
from kdpipe.settings import inputs, teachers
from kdpipe.train.checkpoint import resumed_step


def build_student(cfg, backbone, classnames: list[str], class_features, dataset: str | None):
    from kdpipe.methods import build_method

    s, d = cfg["student"], cfg["distill"]
    overrides = {
        "n_ctx": s.n_ctx,
        "depth": s.depth,
        "teacher_dim": int(class_features.shape[1]),
        # recorded in the student's meta so it tells how it was trained
        "epochs": d.epochs,
        "batch_size": d.batch_size,
        "lr": d.lr,
        "momentum": d.momentum,
        "weight_decay": d.weight_decay,
        "warmup_epochs": d.warmup_epochs,
        "warmup_lr": d.warmup_lr,
    }
    student = build_method(s.method, backbone, classnames, overrides=overrides, dataset=dataset)
    if not getattr(student, "needs_class_features", False):
        raise KdpipeError(f"student.method {s.method!r} is not a distillation student (use promptkd)")
    return student


@register_stage(
    DISTILL,
    reads=["student", "distill", "data.dataset", "data.crop_scale", "teacher.ensemble"],
    deps=["teacher", "text-features", "shards", "teacher-cache", "vocabulary-features"],
    outputs=[f"{STUDENT_STEM}.safetensors", f"{STUDENT_STEM}.json", CURVES],
    seeded=True,
    headline="agreement",
    description="distil the teacher into the prompted student on the unlabeled shards",
)
def run(ctx) -> dict:
    import torch

    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.clip import load_backbone
    from kdpipe.data.shards import ShardStream
    from kdpipe.data.transforms import build_transform
    from kdpipe.distill import DistillStep, measure_agreement
    from kdpipe.distill.ensemble_sources import ensemble_steps
    from kdpipe.distill.ensemble_step import mean_weights
    from kdpipe.distill.gate import gate_line, teacher_gate
    from kdpipe.distill.heldout import HeldoutScorer, heldout_items
    from kdpipe.distill.vocabulary import VocabularyStep
    from kdpipe.distill.teacher_cache import CachedTeacher, member_ids
    from kdpipe.distill.teacher_source import forward_teacher
    from kdpipe.methods.io import load_method, save_method
    from kdpipe.train import OptimConfig, autocast, fit
    from kdpipe.train.selection import make_selector

    cfg, d, seed = ctx.cfg, ctx.cfg["distill"], ctx.seed
    device = inputs.device_of(cfg)
    amp = cfg["run"].amp
    # under torchrun each rank streams its own shards and fit averages the gradients
    rank, world = rank_world()

    # the PRIMARY teacher (the first of teacher.members): its class features are the student's classifier
    tf = read_class_features(features_path(teachers.primary_upstream(ctx, "text-features")))
    teacher, tmeta = load_method(teacher_stem(teachers.primary_upstream(ctx, "teacher")), device=device)
    sb = load_backbone(cfg["student"].backbone, device=device)
    # the teacher gate: the primary teacher must beat the student's zero-shot on held-out base images
    heldout = HeldoutScorer.for_run(cfg, heldout_items(cfg, seed, inputs.fewshot_cache(ctx)), tf)
    judged = bool(heldout.items)
    teacher_base, zeroshot_base = heldout.gate(teacher, sb, cfg["data"].dataset) if judged else (None, None)
    gate = teacher_gate(teacher_base, zeroshot_base, len(heldout.items), d.allow_weak_teacher)
    ctx.log.info(gate_line(gate))
    if d.select == "best_val" and not judged:
        raise KdpipeError("distill.select = best_val needs held-out labelled base images (the few-shot val split); "
                          "this run has none (an empty val split, or data.source set): use distill.select = last")
    torch.manual_seed(seed)  # the student's initial prompts and projector are part of the seeded result
    student = build_student(cfg, sb, tf.classnames, tf.features, cfg["data"].dataset).to(device)
    student.set_class_features(tf.features.to(device))

    shards = read_shards_info(inputs.upstream(ctx, "shards"), ctx.cfg)
    exclude = holdout_exclusion(shards)
    amp_ctx = (lambda: autocast(device, amp)) if amp else None
    forward = forward_teacher(teacher, sb, device, amp)
    # the held-out probe always runs the teacher (those images are in no cache); training reads
    # the teacher-cache stage's features when there is one
    cached = CachedTeacher.load(teachers.primary_upstream(ctx, "teacher-cache"), device) if d.cache_views > 0 else None
    source = cached if cached is not None else forward
    several = len(teachers.member_names(cfg)) > 1
    if several:  # an ensemble target; one teacher keeps the single-teacher step below, exactly
        ens = ensemble_steps(ctx, student, sb, (source, forward, tf, tmeta), device, amp_ctx)
        step, probe = ens.step, ens.probe
    else:
        probe = DistillStep(student, forward, tf.features, tf.logit_scale, d.temperature, d.kd_weight, device, amp=amp_ctx, loss=d.loss)
        if d.vocabulary:  # class-agnostic: the KL over the batch's top-K vocabulary rows; the probe keeps the dataset's classes
            vf = read_class_features(vocabulary_path(inputs.upstream(ctx, "vocabulary-features")))
            step = VocabularyStep(student, source, vf.features, vf.logit_scale, d.temperature, d.kd_weight,
                                  device, amp=amp_ctx, loss=d.loss, top_k=d.vocabulary_top_k)
        else:
            step = DistillStep(student, source, tf.features, tf.logit_scale, d.temperature, d.kd_weight, device, amp=amp_ctx, loss=d.loss)

    train_tf = inputs.train_transform(cfg, sb)
    test_tf = build_transform(False, sb.dims.image_size, sb.mean, sb.std)
    stream = ShardStream(
        shards["train"], train_tf, seed=seed, epoch=0, batch_size=d.batch_size, workers=d.workers,
        rank=rank, world_size=world, with_urls=True, log=ctx.log,
    )

    # damaged shard members met in any pass, train or held-out ({(shard, key): reason}): the log
    # says which, the manifest's metrics how many, so a run on damaged data shows in its results
    damaged: dict[tuple[str, str], str] = {}

    def tallied(passes: ShardStream) -> Iterator:
        try:
            yield from passes
        finally:  # also when the epoch stops early (another rank ran out of batches)
            damaged.update(passes.corrupt_reasons)

    def holdout() -> Iterable:
        if not shards["holdout"]:
            return []  # nothing held out: agreement is not measured
        return tallied(ShardStream(
            shards["holdout"], test_tf, seed=0, epoch=0, batch_size=max(d.batch_size, 64), workers=min(d.workers, 2), log=ctx.log
        ))

    # which epoch's student is kept: best_val scores each epoch on the held-out base images
    selector = make_selector(d.select, student, d.epochs, lambda: heldout.student(student), ctx.ckpt_dir, write=rank == 0)
    probes = AgreementLog(Path(ctx.ckpt_dir) / "agreement.json", write=rank == 0)
    if 0 not in probes:
        probes.record(0, measure_agreement(probe, holdout()))
        ctx.log.info(f"before distillation: agreement {_pct(probes.points[0]['agreement'])} on {probes.points[0]['images']} held-out images")

    def batches(epoch: int, skip: int) -> Iterator:
        if cached is not None:
            # replay the cached view's augmentation (and with it that view's shard order)
            cached.view = epoch % cached.views
            for other in (ens.caches if several else []):  # the other teachers' caches hold the same views
                other.view = cached.view
            stream.set_epoch(cached.view)
        else:
            stream.set_epoch(epoch)
        for i, batch in enumerate(in_step_with_other_ranks(filtered_batches(tallied(stream), exclude), world)):
            if i >= skip:
                # the cache finds an image by (shard, key): keys repeat across shard sets
                yield (batch[0], member_ids(batch[2], batch[1], shards["train"])) if cached is not None else batch

    def probe_after(row: dict) -> None:
        """``fit``'s epoch-end callback: the held-out probe every ``agreement_every`` epochs and after
        the last one (before the epoch's checkpoint, so a resumed run never misses one)."""
        done = row["epoch"]
        selector.after_epoch(done)
        if done == d.epochs or (d.agreement_every and done % d.agreement_every == 0):
            probes.record(done, measure_agreement(probe, holdout()))

    ctx.log.info(
        f"student {cfg['student'].method} on {backbone_label(sb.spec)}: {student.num_learned():,} learned parameters; teacher "
        f"{tmeta['method']} on {backbone_label(tmeta['backbone'])}; {len(tf.classnames)} classes; w={d.kd_weight:g} tau={d.temperature:g}"
    )
    # steps per epoch are known for shards built here; a user's shard set is counted as it streams
    per_epoch = math.ceil(shards["images"] / world / d.batch_size) if shards.get("images") else None
    with ctx.progress(per_epoch * d.epochs if per_epoch else None, desc="distill", initial=resumed_step(ctx.ckpt_dir)) as bar:
        history = fit(
            student,
            student.learned_parameters(),
            d.epochs,
            batches,
            step,
            OptimConfig(d.lr, d.momentum, d.weight_decay, d.warmup_epochs, d.warmup_lr),
            ckpt_dir=ctx.ckpt_dir,
            checkpoint_every=d.checkpoint_every,
            seed=seed,
            device=device,
            amp=amp,
            progress=step_reporter(bar, d.epochs, lambda: step.last_batch_size),
            after_epoch=probe_after,
        )
    selection = selector.finish()  # best_val: the best epoch's prompts and projector are back in the student
    if selection["selected_epoch"] != d.epochs:
        ctx.log.info(f"kept epoch {selection['selected_epoch']} of {d.epochs} (base accuracy {selection['selected_score']:.1f}% held out)")
        if selection["selected_epoch"] not in probes:
            probes.record(selection["selected_epoch"], measure_agreement(probe, holdout()))
    curve = []
    for epoch, point in sorted(probes.points.items()):
        # images: the held-out count, so the report can say what an agreement of 100% rests on
        row = {"epoch": epoch, "agreement": point["agreement"], "kd_loss": point["kd_loss"], "images": point.get("images")}
        train = next((h for h in history if h["epoch"] == epoch), None)
        if train is not None:
            row.update(train_loss=train.get("kd_loss"), train_agreement=train.get("agreement"), lr=train.get("lr"))
        curve.append(row)
    if rank == 0:
        # several teachers: which, and how they were combined (the report shows "ensemble")
        several_meta = {"teachers": ens.described, "ensemble": cfg["teacher"].ensemble} if several else {}
        save_method(student, student_stem(ctx.dir), role="student", seed=seed, teacher=tmeta["method"],
                           teacher_backbone=tmeta["backbone"], transductive=shards.get("transductive", False), loss=d.loss,
                           vocabulary=d.vocabulary or None, selection=selection, gate=gate, **several_meta)
        write_curves(ctx.dir, seed, curve, history)
    start = curve[0]
    end = next(p for p in curve if p["epoch"] == selection["selected_epoch"])  # the kept student
    ctx.log.info(f"agreement {_pct(start['agreement'])} -> {_pct(end['agreement'])} on the held-out slice")
    ensemble_metrics = {"ensemble": cfg["teacher"].ensemble, "teacher_weights": mean_weights(history)} if several else {}
    return {
        **ensemble_metrics,  # several teachers: the choice and each teacher's mean weight over the run
        "agreement": end["agreement"],
        "agreement_start": start["agreement"],
        "heldout_kd_loss": end["kd_loss"],
        "train_loss": history[-1].get("kd_loss") if history else None,
        **selection,  # select, selected_epoch (best_val: its held-out score and every epoch's)
        **gate,  # the teacher gate's two accuracies and its verdict
        "corrupt_members": len(damaged),  # skipped shard members (this rank's shards under torchrun)
    }


def _pct(value: float | None) -> str:
    return "n/a (nothing held out)" if value is None else f"{100 * value:.1f}%"
