"""Held-out labelled base images for the distill stage: its model selection (``distill.select =
best_val``) and its teacher gate (:mod:`kdpipe.distill.gate`) score on them.

They are the few-shot val split of the classes the teacher trained on (``min(shots, 4)`` per class,
the seed's own draw, as Dassl's val loader in the reference): never the test split, never an
image of the unlabeled train split the student distils on. Labels are the base classes' (the
first rows of the stored class features). With ``data.source`` (a teacher trained on another
dataset) there are none: the student's classes are the target's, and scoring it on the source's
labels would need the source's class features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdpipe.artefacts.class_features import ClassFeatures


def heldout_items(cfg, seed: int, cache_dir: Path | None = None) -> list:
    if cfg["data"].source:
        return []
    from kdpipe.train.fewshot import train_splits

    return list(train_splits(cfg, seed, cache_dir).val)


@dataclass
class HeldoutScorer:
    """Accuracy (percent) of a method over the held-out images, against their ``n`` classes."""

    items: list
    classes: ClassFeatures  # the stored rows of the classes the items' labels index (base first)
    device: Any
    batch_size: int = 64
    workers: int = 0
    amp: bool = False

    @classmethod
    def for_run(cls, cfg, items: list, tf: ClassFeatures) -> "HeldoutScorer":
        from kdpipe.settings import inputs

        n = tf.num_base if cfg["data"].mode == "base2novel" and tf.num_base else len(tf.classnames)
        rows = ClassFeatures(tf.features[:n], list(tf.classnames[:n]), tf.logit_scale, n)
        return cls(items, rows, inputs.device_of(cfg), cfg["evaluate"].batch_size, cfg["data"].workers, cfg["run"].amp)

    def accuracies(self, scorers: list) -> list[float]:
        """Each scorer's accuracy, from one pass over the images (one decode per preprocessing)."""
        from kdpipe.eval.scoring import collect_logits

        logits, labels = collect_logits(scorers, self.items, self.batch_size, self.workers, self.device, self.amp)
        return [100.0 * (rows.argmax(1) == labels).float().mean().item() for rows in logits]

    def student(self, student) -> float:
        """The student against the stored rows, in eval mode (its projector's BatchNorm)."""
        from kdpipe.eval.scoring import features_scorer

        was_training = student.training
        student.eval()
        try:
            return self.accuracies([features_scorer(student, "student", self.classes.features)])[0]
        finally:
            student.train(was_training)

    def gate(self, teacher, backbone, dataset: str | None) -> tuple[float, float]:
        """The teacher gate's two accuracies: the teacher against its stored rows, and the student's
        own CLIP with the dataset's hand templates (where the student starts), both scored in the
        same pass over the images."""
        from kdpipe.eval.scoring import method_scorer, teacher_scorer
        from kdpipe.methods import build_method

        names = list(self.classes.classnames)
        zeroshot = build_method("zeroshot", backbone, names, dataset=dataset).to(self.device)
        teacher_acc, zeroshot_acc = self.accuracies([teacher_scorer(teacher, self.classes), method_scorer(zeroshot, "zeroshot", names)])
        return teacher_acc, zeroshot_acc


def heldout_notes(student_meta: dict, seed) -> list[str]:
    """The report's lines on how the student was kept and on the teacher gate, from its meta
    (``student.json``; a student distilled before these existed has neither)."""
    from kdpipe.distill.gate import gate_line

    out = []
    selection = student_meta.get("selection")
    if selection:
        if selection["select"] == "best_val":
            kept = (f"epoch {selection['selected_epoch']} of {student_meta.get('config', {}).get('epochs', '?')}, the best on held-out "
                    f"labelled base images ({selection['selected_score']:.1f}%; distill.select = best_val)")
        else:
            kept = "its last epoch (distill.select = last)"
        out.append(f"seed {seed}: the student is {kept}; teacher and baselines keep their last epoch")
    gate = student_meta.get("gate")
    if gate:
        out.append(f"seed {seed}: teacher gate: {gate_line(gate)}")
    return out
