"""Class-agnostic distillation (KDPL-CA, ECCV 2024): the KL runs over a large vocabulary of class
names instead of the dataset's own classes.

``distill.vocabulary`` names a text file of class names, one per line (``#`` starts a comment
line; a name listed twice counts once), or a built-in list: ``imagenet`` (ImageNet-1k's names as
CLIP spells them, in ``vocabularies/``). The teacher's text side encodes the vocabulary once (stage
``vocabulary-features``); per batch, :func:`top_k_classes` picks ``distill.vocabulary_top_k`` of
its classes and :class:`VocabularyStep` scores teacher and student over those only. The student's
classifier for evaluation and ``classify`` stays the dataset's classes.

Which K classes (decided here, documented in the README):
  1. every image's own top class under the teacher (its argmax), so no image's target is
     renormalised over classes that leave out the one it is about: KDPL's batch mean alone can drop
     a confident image of a class the rest of the batch does not share;
  2. then the classes of highest mean teacher probability over the batch (KDPL's rule), up to K.
When a batch has more distinct argmaxes than K, the K of them with the highest mean probability
are kept. The probabilities are the teacher's plain softmax (temperature 1), as in KDPL.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdpipe.distill.loss import class_logits
from kdpipe.distill.step import DistillStep
from kdpipe.errors import KdpipeError

BUILTIN_DIR = Path(__file__).parent / "vocabularies"


def builtin_vocabularies() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.txt"))


def vocabulary_path(spec: str) -> Path:
    """A built-in vocabulary's file (``imagenet``), else ``spec`` as a path (``~`` expanded)."""
    builtin = BUILTIN_DIR / f"{spec}.txt"
    if builtin.is_file():
        return builtin
    path = Path(spec).expanduser()
    if not path.is_file():
        raise KdpipeError(
            f"distill.vocabulary {spec!r} is neither a file nor a built-in vocabulary ({', '.join(builtin_vocabularies())})"
        )
    return path


def read_vocabulary(spec: str) -> list[str]:
    """The class names of vocabulary ``spec``, in file order, each once."""
    path = vocabulary_path(spec)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KdpipeError(f"distill.vocabulary: cannot read {path}: {e}") from None
    names = list(dict.fromkeys(s for s in (line.strip() for line in lines) if s and not s.startswith("#")))
    if len(names) < 2:
        raise KdpipeError(f"distill.vocabulary {path} holds {len(names)} class name(s); a vocabulary needs at least 2")
    return names


def top_k_classes(teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``min(k, V)`` vocabulary classes for a batch's teacher logits ``[B, V]``."""
    probs = torch.softmax(teacher_logits.detach().float(), dim=-1)
    mean = probs.mean(dim=0)
    k = min(int(k), mean.numel())
    own = torch.unique(probs.argmax(dim=-1))
    if own.numel() >= k:
        chosen = own[mean[own].topk(k).indices]
    else:
        rest = mean.clone()
        rest[own] = float("-inf")
        chosen = torch.cat([own, rest.topk(k - own.numel()).indices])
    return chosen.sort().values


class VocabularyStep(DistillStep):
    """:class:`DistillStep` over a vocabulary: ``class_features`` are the teacher's ``[V, D]``
    vocabulary rows, and each batch is scored over its :func:`top_k_classes` only."""

    def __init__(self, *args, top_k: int, **kwargs):
        super().__init__(*args, **kwargs)
        if top_k < 2:
            raise KdpipeError(f"distill.vocabulary_top_k must be at least 2, got {top_k}")
        self.top_k = int(top_k)
        self.last_classes: torch.Tensor | None = None  # the last batch's chosen vocabulary rows
        # K covering the whole vocabulary (the built-in imagenet list, 998 names, at the default K = 1000) leaves
        # nothing to choose: every row, without the per-batch choice (its torch.unique waits for the
        # device every step) or copies of the rows
        v = self.class_features.shape[0]
        self.every_class = torch.arange(v, device=self.device) if self.top_k >= v else None

    def logits(self, images: torch.Tensor, keys) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.teacher_logits(images, keys)  # [B, V]
        if self.every_class is not None:
            self.last_classes, rows = self.every_class, self.class_features
        else:
            self.last_classes = top_k_classes(t, self.top_k)
            rows, t = self.class_features[self.last_classes], t[:, self.last_classes]
        with self.amp():
            student_features = self.student.encode_images(images)
        return class_logits(student_features, rows, self.student_scale), t
