"""Zero-shot accuracy of a world CLIP, clean and shifted, as the demo reports it.

The shifted numbers follow the base-to-novel protocol: the 64 classes are split by sorted label
into base (first 32) and novel (last 32), each half is classified among its own 32 classes with
"a photo of a {c}." prompts, and HM is the harmonic mean of the two accuracies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from kdpipe.world.classes import CLASSNAMES, NUM_BASE, NUM_CLASSES
from kdpipe.world.render import render_batch
from kdpipe.world.shift import DEFAULT_SHIFT, Shift, shift_images

PROMPT = "a photo of a {c}."
# Separates evaluation renders from pretraining and from the downstream dataset.
_EVAL_STREAM = 0xE7A1


@dataclass(frozen=True)
class WorldZeroShot:
    clean: float  # 64-way accuracy on clean renders, %
    base: float  # shifted renders, base classes among themselves, %
    novel: float  # shifted renders, novel classes among themselves, %
    hm: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W], as the test transform does at 32 px."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: np.ndarray, classes: list[int], batch_size: int = 512) -> float:
    """% of ``images`` whose best-matching prompt among ``classes`` is their own label."""
    text = model.encode_text(tokenizer([PROMPT.format(c=CLASSNAMES[c]) for c in classes]), normalize=True)
    index = {c: i for i, c in enumerate(classes)}
    target = torch.tensor([index[int(y)] for y in labels])
    correct = 0
    for start in range(0, len(images), batch_size):
        feats = model.encode_image(images[start : start + batch_size], normalize=True)
        pred = (feats @ text.T).argmax(dim=1)
        correct += int((pred == target[start : start + batch_size]).sum())
    return 100.0 * correct / max(len(images), 1)


def eval_images(seed: int, per_class: int, shift: Shift | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _EVAL_STREAM, int(shift is not None)]))
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    images = render_batch(labels, rng).images
    if shift is not None:
        images = shift_images(images, rng, shift)
    return images, labels


@torch.no_grad()
def evaluate_world_zeroshot(model, tokenizer, mean, std, seed: int = 0, per_class: int = 50, shift: Shift = DEFAULT_SHIFT) -> WorldZeroShot:
    """Clean 64-way and shifted base/novel/HM zero-shot accuracy on fresh renders."""
    was_training = model.training
    model.eval()
    try:
        clean_img, clean_lab = eval_images(seed, per_class, None)
        clean = zero_shot_accuracy(model, tokenizer, to_tensor(clean_img, mean, std), clean_lab, list(range(NUM_CLASSES)))
        shift_img, shift_lab = eval_images(seed, per_class, shift)
        x = to_tensor(shift_img, mean, std)
        base_mask = shift_lab < NUM_BASE
        base = zero_shot_accuracy(model, tokenizer, x[base_mask], shift_lab[base_mask], list(range(NUM_BASE)))
        novel = zero_shot_accuracy(model, tokenizer, x[~base_mask], shift_lab[~base_mask], list(range(NUM_BASE, NUM_CLASSES)))
    finally:
        model.train(was_training)
    return WorldZeroShot(clean=clean, base=base, novel=novel, hm=harmonic_mean(base, novel))
