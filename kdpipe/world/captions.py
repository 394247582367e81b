"""Captions for pretraining: a handful of templates, so the text tower learns words, not one string.

The zero-shot prompt every method starts from ("a photo of a {c}.") is one of the templates; the
others vary word order ("a {shape} that is {colour}.") so that colour and shape must be read as
separate words rather than as one fused class token.
"""

from __future__ import annotations

from kdpipe.world.classes import WORLD_CLASSES

TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a {colour} {shape}.",
    "a {shape} that is {colour}.",
    "a {c} on a dark background.",
    "a drawing of a {c}.",
    "there is a {c} in the picture.",
    "a {colour} shape: a {shape}.",
    "a {shape}, coloured {colour}.",
)


def caption(label: int, template: int) -> str:
    cls = WORLD_CLASSES[label]
    return TEMPLATES[template].format(c=cls.name, colour=cls.colour, shape=cls.shape)


def caption_table() -> list[list[str]]:
    """``[class][template]`` -> caption, for every class and template."""
    return [[caption(c.label, t) for t in range(len(TEMPLATES))] for c in WORLD_CLASSES]
