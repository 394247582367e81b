"""The Python API: a bundle classifies and embeds images in memory; ``run`` runs the stage graph.

    import kdpipe

    model = kdpipe.load_bundle("pets-student")
    for p in model.predict(["cat.jpg", "dog.png"], top_k=3):
        print(p.labels, p.probs)
    emb = model.embed(images)  # torch.Tensor [N, D], float32 on the CPU, unit rows

Images are PIL images, file paths, or a tensor batch already preprocessed (``model.transform``).
Everything runs without gradients, in fp32 unless ``load_bundle(..., precision=)`` says otherwise, so
results are reproducible; ``kdpipe classify``
remains the tool for many images (DataLoader workers, resume, sharded output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Union

import torch

from kdpipe.errors import KdpipeError

if TYPE_CHECKING:  # PIL is imported when images are decoded
    from PIL import Image

ImageLike = Union[str, Path, "Image.Image"]


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first."""

    labels: list[str]
    probs: list[float]  # softmax over all classes of logit_scale * cosine similarity
    ids: list[int]  # rows of ``Model.classnames``


class Model:
    """A loaded bundle: ``predict`` (top-k labels) and ``embed`` (image features), in memory."""

    def __init__(self, class_model, device: str | torch.device = "cpu"):
        self.class_model = class_model.to(device)  # kdpipe.infer.bundle.ClassModel
        self.device = torch.device(device)
        self.transform = class_model.transform()  # PIL image -> [3, S, S], what the model was trained on

    @property
    def classnames(self) -> list[str]:
        return self.class_model.classnames

    @property
    def precision(self) -> str:
        """The image tower's precision (``load_bundle(..., precision=)``; auto resolved)."""
        return self.class_model.precision

    def embed(self, images: ImageLike | Iterable[ImageLike] | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """L2-normalised image features ``[N, D]`` (torch, float32, CPU) in the space of the class features.

        For a student that is the teacher's space (its projector's output), so rows compare directly
        with the bundle's class features and with the teacher's text features.
        """
        method = self.class_model.method.eval()
        out = []
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            for batch in self._batches(images, batch_size):
                out.append(method.encode_images(batch.to(self.device)).float().cpu())
        return torch.cat(out)

    def probabilities(self, images: ImageLike | Iterable[ImageLike] | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``[N, C]`` class probabilities: softmax of ``logit_scale * cosine`` over all classes."""
        cm = self.class_model
        return torch.softmax(cm.logit_scale * self.embed(images, batch_size) @ cm.class_features.t(), dim=-1)

    def predict(self, images: ImageLike | Iterable[ImageLike] | torch.Tensor, top_k: int = 5,
                batch_size: int = 64) -> list[Prediction]:
        """One :class:`Prediction` per image, in input order: the ``top_k`` classes, best first."""
        if top_k < 1:
            raise KdpipeError(f"top_k must be at least 1, got {top_k}")
        probs, ids = self.probabilities(images, batch_size).topk(min(top_k, len(self.classnames)), dim=-1)
        return [Prediction([self.classnames[i] for i in row_ids], row_probs, row_ids)
                for row_probs, row_ids in zip(probs.tolist(), ids.tolist())]

    # ---- inputs -----------------------------------------------------------------------------------
    def _batches(self, images, batch_size: int) -> Iterator[torch.Tensor]:
        if batch_size < 1:
            raise KdpipeError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(images, torch.Tensor):
            batch = self._check_tensor(images)
            yield from batch.split(batch_size)
            return
        items = [images] if isinstance(images, (str, Path)) or _is_pil(images) else list(images)
        if not items:
            raise KdpipeError("no images given")
        for start in range(0, len(items), batch_size):
            yield torch.stack([self.transform(_decode(x)) for x in items[start : start + batch_size]])

    def _check_tensor(self, images: torch.Tensor) -> torch.Tensor:
        size = self.class_model.preprocess()["image_size"]
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or tuple(batch.shape[1:]) != (3, size, size) or not batch.is_floating_point():
            raise KdpipeError(
                f"a tensor of images must be a float batch [N, 3, {size}, {size}] already preprocessed "
                f"(model.transform); got {tuple(images.shape)} {images.dtype}"
            )
        return batch.float()


def _is_pil(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


def _decode(x: Any):
    """A PIL image as given, or a path decoded the way every kdpipe stage decodes it."""
    from kdpipe.data.images import DECODE_ERRORS, describe_error, load_rgb

    if _is_pil(x):
        return x
    if not isinstance(x, (str, Path)):
        raise KdpipeError(f"an image must be a PIL image or a file path, got {type(x).__name__}")
    try:
        return load_rgb(str(x))
    except FileNotFoundError:
        raise KdpipeError(f"image {x} does not exist") from None
    except DECODE_ERRORS as e:
        raise KdpipeError(f"cannot read image {x}: {describe_error(e)}") from None


def load_bundle(path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> Model:
    """The bundle folder ``path`` (``kdpipe export``) on ``device``, needing nothing outside it.

    ``precision``: the image tower's, as ``kdpipe classify --precision`` (fp32, bf16, int8, auto);
    fp32 by default, exactly as trained. Features and probabilities come back fp32 whatever it is."""
    from kdpipe.infer.bundle import load_bundle as load_class_model

    return Model(load_class_model(path, device=device, precision=precision), device)


def run(target: str = "all", *, run_dir: str | Path, recipe: str | None = None,
        settings: Mapping[str, Any] | None = None, with_deps: bool = False, force: bool = False, jobs: int = 1,
        only: bool = False):
    """Run what is missing or stale, as ``kdpipe run TARGET --run-dir RUN_DIR`` does; returns the RunReport.

    A stage as ``target`` brings it and everything downstream of it up to date; ``only=True`` runs
    just that stage (``--only``).

    ``settings`` maps config keys to values (``{"distill.lr": 0.01}``), like ``--set``. As on the
    command line, the run dir remembers recipe and settings (``run.json``): a later call on it
    reuses them and changes just what it names.
    """
    from kdpipe.open_run import open_run

    # the caller's settings are its command line (trusted like --set), remembered as given; the same
    # checks as the CLI's run before the first stage (a bad backbone spec fails now, not mid-run)
    opened = open_run(run_dir, recipe, values=settings)
    return opened.run(target, with_deps=with_deps, force=force, downstream=not only, jobs=jobs)
