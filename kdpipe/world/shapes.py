"""Shape silhouettes as inside-tests on local coordinates, one registered function per shape.

Each function takes ``u, v`` (float arrays of any shape: the sample grid already moved into the
shape's frame, unit = the shape's radius, ``v`` pointing up) and returns a bool array, True inside.
All shapes span roughly the unit disc so that "size" means the same for every class. Working on
whole batches of grids at once is what makes rendering fast: no per-image Python.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
SHAPE_FNS: dict[str, ShapeFn] = {}


def register_shape(name: str) -> Callable[[ShapeFn], ShapeFn]:
    def deco(fn: ShapeFn) -> ShapeFn:
        SHAPE_FNS[name] = fn
        return fn

    return deco


@register_shape("circle")
def circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v < 0.85**2


@register_shape("square")
def square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) < 0.72


@register_shape("diamond")
def diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # A rhombus taller than wide: even a square turned the full 20 degrees stays distinguishable.
    return np.abs(u) / 0.62 + np.abs(v) / 0.98 < 1.0


@register_shape("triangle")
def triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, pointing up, circumradius 1, centred on its centroid.
    r3 = np.sqrt(3.0)
    return (v > -0.5) & (r3 * u + v < 1.0) & (-r3 * u + v < 1.0)


@register_shape("star")
def star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points, outer radius 1, inner 0.45. Fold the angle into one half-spike (0..pi/5 from a
    # tip) and test against the edge from the tip to the neighbouring inner vertex.
    outer, inner = 1.0, 0.45
    sector = np.pi / 5
    theta = np.arctan2(u, v)  # 0 = straight up, so one tip points up
    phi = np.abs((theta + sector) % (2 * sector) - sector)
    r = np.hypot(u, v)
    x, y = r * np.cos(phi), r * np.sin(phi)
    x1, y1 = inner * np.cos(sector), inner * np.sin(sector)
    # inside when (x, y) lies on the origin's side of the line (outer, 0) -> (x1, y1)
    return (x1 - outer) * y - y1 * (x - outer) > 0.0


@register_shape("cross")
def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au < 0.28) & (av < 0.9)) | ((av < 0.28) & (au < 0.9))


@register_shape("heart")
def heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # The classic sextic (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled and centred into the unit disc.
    x = 1.2 * u
    y = 1.2 * v + 0.12
    q = x * x + y * y - 1.0
    return q * q * q - x * x * y * y * y <= 0.0


@register_shape("crescent")
def crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # A disc with a disc bitten out of its right side.
    return (u * u + v * v < 0.9**2) & ((u - 0.42) ** 2 + (v - 0.08) ** 2 > 0.72**2)
