"""What the ``distill`` stage adds for several teachers (``teacher.members``): the other teachers' sources.

Each teacher other than the primary is loaded from its own ``teacher:<method>`` folder and scores
the batch against its own ``text-features:<method>`` rows, from its own ``teacher-cache:<method>``
when ``distill.cache_views > 0``; the target is their ensemble (``teacher.ensemble``,
:mod:`kdpipe.distill.ensemble`). The student keeps the primary teacher's rows as its classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdpipe.artefacts.run_layout import features_path, teacher_stem
from kdpipe.errors import KdpipeError
from kdpipe.settings import teachers


@dataclass
class EnsembleSteps:
    step: object  # EnsembleStep of the training batches (cached features where there are some)
    probe: object  # EnsembleStep of the held-out probe (always a teacher forward)
    caches: list = field(default_factory=list)  # the other teachers' CachedTeacher, to follow the view
    described: list[str] = field(default_factory=list)  # "method on backbone" per teacher, primary first


def ensemble_steps(ctx, student, student_backbone, primary, device, amp_ctx) -> EnsembleSteps:
    """``primary``: (train source, probe source, class features, meta) of the primary teacher."""
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.distill.ensemble_step import EnsembleMember, EnsembleStep
    from kdpipe.distill.teacher_cache import CachedTeacher
    from kdpipe.distill.teacher_source import forward_teacher
    from kdpipe.methods.io import load_method

    cfg, d = ctx.cfg, ctx.cfg["distill"]
    train_source, probe_source, tf, tmeta = primary
    names = teachers.member_names(cfg)
    folders = teachers.upstream_by_member(ctx, "teacher")
    features = teachers.upstream_by_member(ctx, "text-features")
    cache_dirs = teachers.upstream_by_member(ctx, "teacher-cache") if d.cache_views > 0 else {}
    train = [EnsembleMember(names[0], train_source, tf.features, tf.logit_scale)]
    probe = [EnsembleMember(names[0], probe_source, tf.features, tf.logit_scale)]
    out = EnsembleSteps(None, None, described=[f"{tmeta['method']} on {tmeta['backbone']}"])
    for name in names[1:]:
        other_tf = read_class_features(features_path(features[name]))
        if list(other_tf.classnames) != list(tf.classnames):
            raise KdpipeError(f"teacher {name}'s class features name other classes than the primary teacher's; re-run text-features:{name}")
        teacher, meta = load_method(teacher_stem(folders[name]), device=device)
        forward = forward_teacher(teacher, student_backbone, device, cfg["run"].amp)
        cached = CachedTeacher.load(cache_dirs[name], device) if name in cache_dirs else None
        if cached is not None:
            out.caches.append(cached)
        train.append(EnsembleMember(name, cached if cached is not None else forward, other_tf.features, other_tf.logit_scale))
        probe.append(EnsembleMember(name, forward, other_tf.features, other_tf.logit_scale))
        out.described.append(f"{meta['method']} on {meta['backbone']}")
    mode = cfg["teacher"].ensemble
    out.step = EnsembleStep(student, train, mode, d.temperature, d.kd_weight, device, amp=amp_ctx, loss=d.loss)
    out.probe = EnsembleStep(student, probe, mode, d.temperature, d.kd_weight, device, amp=amp_ctx, loss=d.loss)
    return out
