"""The 64 classes of the demo world: every (colour, shape) pair, and how labels are numbered.

Labels put the "base" half first so the usual rule (sort labels, base = first ceil(n/2)) yields
it. The halves are a checkerboard over (shape, colour): each half holds every colour with four
shapes and every shape with four colours, so a novel class is a new *combination* of a colour and a
shape the base classes already show. That is the base-to-novel question at this scale: does the
method keep the vocabulary it did not train on, or collapse onto the 32 names it saw?
"""

from __future__ import annotations

from dataclasses import dataclass

# Saturated, well-separated hues plus white; RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.60, 0.20, 0.85),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.95, 0.95, 0.95),
}

# The order matters only for the checkerboard; the drawing lives in kdpipe.world.shapes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "heart", "crescent")


@dataclass(frozen=True)
class WorldClass:
    label: int
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _build() -> tuple[WorldClass, ...]:
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    base = [p for p in pairs if (p[0] + p[1]) % 2 == 0]
    novel = [p for p in pairs if (p[0] + p[1]) % 2 == 1]
    colours = list(COLOURS)
    return tuple(WorldClass(i, colours[c], SHAPES[s]) for i, (s, c) in enumerate(base + novel))


WORLD_CLASSES: tuple[WorldClass, ...] = _build()
CLASSNAMES: tuple[str, ...] = tuple(c.name for c in WORLD_CLASSES)
NUM_CLASSES = len(WORLD_CLASSES)
NUM_BASE = (NUM_CLASSES + 1) // 2
