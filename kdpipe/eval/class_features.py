"""Class features from a method's text side: the rows the ``text-features`` stage stores and
``evaluate`` makes for the class names of each ``evaluate.targets`` dataset, made the same way (so
a class shared by both gets the very same row)."""

from __future__ import annotations

from kdpipe.artefacts.class_features import ClassFeatures
from kdpipe.progress import Progress

# class names per text pass: ImageNet's 1000 names through a ViT-L text tower take a while, and a
# chunk at a time lets the progress bar move (each row depends on its own class name only)
CHUNK = 100


def compute_text_features(teacher, classnames: list[str], num_base: int, progress: Progress | None = None,
                          chunk: int = CHUNK) -> ClassFeatures:
    """Run the teacher's (prompted) text side over ``classnames`` once, in fp32, without gradients;
    ``progress`` advances by the classes of each chunk."""
    import torch
    import torch.nn.functional as F

    names = list(classnames)
    parts = []
    with torch.no_grad(), torch.autocast(teacher.device.type, enabled=False):
        for start in range(0, len(names), chunk):
            part = names[start:start + chunk]
            parts.append(F.normalize(teacher.class_features(part).float(), dim=-1).cpu())
            if progress is not None:
                progress.update(len(part))
    return ClassFeatures(torch.cat(parts), names, float(teacher.clip.logit_scale), num_base)
