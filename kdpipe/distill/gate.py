"""The teacher gate: distil only a teacher that beats the student's own zero-shot start.

PromptKD's student learns nothing but the teacher's distribution, so it is bounded by the teacher:
a teacher worse than the student's zero-shot CLIP on the classes it was trained on (a small
few-shot budget, custom data far from CLIP's) drags the student below where it starts. Before
distilling, the ``distill`` stage scores both on the same held-out LABELLED base images (the
few-shot val split, never the test split): the teacher with its learned prompts, the student
backbone with the dataset's hand templates. A teacher that does not score strictly higher stops
the run in one line; ``distill.allow_weak_teacher = true`` runs it anyway. Both numbers go to the
stage's metrics and the report either way.
"""

from __future__ import annotations

from kdpipe.errors import KdpipeError

OVERRIDE = "distill.allow_weak_teacher = true"


def teacher_gate(teacher_base: float | None, student_zeroshot_base: float | None, images: int, allow_weak: bool) -> dict:
    """The gate's record for the metrics (accuracies in percent); raises when the teacher does not
    beat the student's zero-shot and ``allow_weak`` is off. ``None`` accuracies (no held-out
    labelled images) leave the gate unjudged."""
    record = {"gate_teacher_base": teacher_base, "gate_student_zeroshot_base": student_zeroshot_base, "gate_images": images}
    if teacher_base is None or student_zeroshot_base is None:
        return {**record, "gate": "unjudged"}
    if teacher_base > student_zeroshot_base:
        return {**record, "gate": "passed"}
    if allow_weak:
        return {**record, "gate": "overridden"}
    raise KdpipeError(
        f"teacher gate: the teacher's base accuracy {teacher_base:.1f}% on {images} held-out base images does not beat "
        f"the student's zero-shot {student_zeroshot_base:.1f}%, so distilling it would pull the student down; "
        f"train a stronger teacher or set {OVERRIDE} to run anyway"
    )


def gate_line(metrics: dict) -> str | None:
    """``teacher 81.2% vs student zero-shot 64.0% on 128 held-out base images (passed)`` for logs and
    the report; None when the run recorded no gate."""
    if "gate" not in metrics:
        return None
    t, s = metrics.get("gate_teacher_base"), metrics.get("gate_student_zeroshot_base")
    if t is None or s is None:
        return "teacher gate not judged (no held-out labelled base images)"
    return f"teacher {t:.1f}% vs student zero-shot {s:.1f}% on {metrics.get('gate_images')} held-out base images ({metrics['gate']})"
