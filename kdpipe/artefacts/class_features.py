"""Class features on disk: the ``[C, D]`` rows images are scored against, and what goes with them.

One safetensors file: tensor ``features`` (float32, one L2-normalised row per class, base classes
first) and, as JSON metadata, ``classnames``, ``logit_scale`` (the scale of the model the rows came
from, ``logit_scale.exp()``), ``num_base`` (rows ``[:num_base]`` are base classes; absent when
unknown) and any provenance the writer adds. The ``text-features`` stage writes it once per seed
from the trained teacher's text side; a bundle carries a copy. Distillation, evaluation and
``kdpipe classify`` read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.io import read_tensors, write_tensors

_FIELDS = ("classnames", "logit_scale", "num_base")

# The file's name where it is kept, each the name it always had on disk (finished run dirs stay
# done, exported bundles keep loading): the text-features stage's own, and a bundle's copy.
IN_STAGE_FOLDER = "text_features.safetensors"
IN_BUNDLE = "class_features.safetensors"


@dataclass
class ClassFeatures:
    features: Any  # torch.Tensor [C, D], float32, unit rows
    classnames: list[str]
    logit_scale: float
    num_base: int | None = None  # None: no base/novel split is known (e.g. new class names)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: teacher, dataset, seed ...


def write_class_features(path: str | os.PathLike, cf: ClassFeatures) -> Path:
    """Write ``cf`` to ``path`` atomically."""
    meta = {k: v for k, v in cf.meta.items() if k not in _FIELDS}
    meta.update(classnames=list(cf.classnames), logit_scale=float(cf.logit_scale), num_base=cf.num_base)
    return write_tensors(path, {"features": cf.features.float()}, meta)


def read_class_features(path: str | os.PathLike) -> ClassFeatures:
    """The file :func:`write_class_features` wrote; a KdpipeError (one line) when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"class features {path} not found")
    try:
        tensors, meta = read_tensors(path)
        num_base = meta.pop("num_base", None)
        cf = ClassFeatures(tensors["features"].float(), list(meta.pop("classnames")), float(meta.pop("logit_scale")),
                           None if num_base is None else int(num_base), meta)
    except (KeyError, ValueError, TypeError) as e:  # a readable safetensors file of another kind
        raise KdpipeError(f"{path} is not a readable kdpipe class-feature file ({type(e).__name__}: {e})") from None
    if cf.features.dim() != 2 or cf.features.shape[0] != len(cf.classnames):
        raise KdpipeError(f"{path}: {tuple(cf.features.shape)} features for {len(cf.classnames)} class names")
    return cf
