"""Scoring methods on labelled images: each method a :class:`Scorer` (``logits(images) -> [B, C]``
over all classes, base first), and one pass over the images for every scorer (:func:`collect_logits`).

The ``evaluate`` stage scores teacher, student and baselines with them; the demo's ``world`` stage
scores its two pretrained CLIPs zero-shot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kdpipe.dist import worker_init
from kdpipe.errors import KdpipeError


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
    from kdpipe.eval.class_features import compute_text_features

    if teacher.conditions_on_image:
        raise KdpipeError(f"evaluate.targets needs class features the student can score against; the {teacher.name} teacher "
                          "makes them per image, so pick a teacher.method without an image-conditioned text side")
    return compute_text_features(teacher, classnames, len(classnames)).features
