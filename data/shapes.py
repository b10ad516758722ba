"""A procedural dataset of class-distinct shapes: the demo's default data (`ganforge data shapes`).

A small conditional GAN learns it in minutes on CPU, and a person recognises every class in its
samples (on CIFAR-10 the same budget gives colour blobs). Each image is one filled shape (the
class) in a random saturated colour on a random dark, desaturated background, with jittered
position, size and rotation; shapes are drawn 4x larger and downsampled, so edges are
anti-aliased.

Deterministic: image i of class c in split s is drawn from its own seeded generator
(`SeedSequence([seed, split, c, i])`), so the same arguments give the same pixels, whatever the
number of images asked for (the first N of a larger set are the same N images).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from ganforge.data import DataError
from ganforge.data.dataset import Dataset, Item

SUPERSAMPLE = 4  # draw at 4x, downsample with a box filter: anti-aliased edges
MAX_BYTES = 2 << 30  # a cap on the pixels held in memory before packing (6 x 100k x 32x32x3 fit)
SPLIT_IDS = {"train": 0, "test": 1}
Polygon = list[tuple[float, float]]
RGB = tuple[int, int, int]


def _regular(n: int, r: float, phase: float) -> Polygon:
    """n vertices on a circle of radius r, the first at angle `phase` (radians, 0 = up)."""
    return [
        (r * math.sin(phase + 2 * math.pi * k / n), -r * math.cos(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(r: float, phase: float) -> Polygon:
    outer, inner = _regular(5, r, phase), _regular(5, 0.42 * r, phase + math.pi / 5)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _cross(r: float, phase: float) -> Polygon:
    """A plus sign of arm half-width 0.3 r, rotated by `phase`."""
    a, w = r, 0.3 * r
    pts = [(w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a)]
    pts += [(-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w), (-w, -a)]
    c, s = math.cos(phase), math.sin(phase)
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


def _disc(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _polygon(d: ImageDraw.ImageDraw, cx: float, cy: float, pts: Polygon, fill: RGB) -> None:
    d.polygon([(cx + x, cy + y) for x, y in pts], fill=fill)


# Each shape: draw(d, cx, cy, r, rot, fill, bg), r the nominal radius, rot a rotation (radians).
# Sizes are scaled so that every shape covers a similar area.
def circle(d, cx, cy, r, rot, fill, bg) -> None:
    _disc(d, cx, cy, 0.9 * r, fill)


def square(d, cx, cy, r, rot, fill, bg) -> None:
    _polygon(d, cx, cy, _regular(4, 1.1 * r, math.pi / 4 + rot), fill)


def triangle(d, cx, cy, r, rot, fill, bg) -> None:
    _polygon(d, cx, cy + 0.15 * r, _regular(3, 1.2 * r, rot), fill)  # centred by its area


def cross(d, cx, cy, r, rot, fill, bg) -> None:
    _polygon(d, cx, cy, _cross(r, rot), fill)


def ring(d, cx, cy, r, rot, fill, bg) -> None:
    _disc(d, cx, cy, 0.95 * r, fill)
    _disc(d, cx, cy, 0.5 * r, bg)


def star(d, cx, cy, r, rot, fill, bg) -> None:
    _polygon(d, cx, cy, _star(1.15 * r, rot), fill)


SHAPES: dict[str, Callable[..., None]] = {
    f.__name__: f for f in (circle, square, triangle, cross, ring, star)
}  # class-index order
CLASSES = tuple(SHAPES)


def _rgb(h: float, s: float, v: float) -> RGB:
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def render(shape: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One image of `shape`, uint8 [size, size, 3], its jitter drawn from `rng`."""
    big = size * SUPERSAMPLE
    bg = _rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.08, 0.4))
    fill = _rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.8, 1.0))
    r = big * rng.uniform(0.27, 0.4)
    cx, cy = big * (0.5 + rng.uniform(-0.1, 0.1, size=2))
    rot = math.radians(rng.uniform(-20, 20))
    img = Image.new("RGB", (big, big), bg)
    SHAPES[shape](ImageDraw.Draw(img), cx, cy, r, rot, fill, bg)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX))


def shapes_dataset(
    per_class: dict[str, int], seed: int = 0, size: int = 32, classes: tuple[str, ...] = CLASSES
) -> Dataset:
    """`per_class` images of each shape per split ({"train": 1000, "test": 200}), as a Dataset
    the packer writes like any other source. DataError on an unknown split or shape, a count
    below 1, a negative seed, or more pixels than MAX_BYTES."""
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes:
        raise DataError(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    if seed < 0:
        raise DataError(f"seed {seed}: must be >= 0")
    for split, n in per_class.items():
        if split not in SPLIT_IDS:
            raise DataError(f"split {split!r}: shapes has {' and '.join(SPLIT_IDS)}")
        if n < 1:
            raise DataError(f"{split}: {n} images per class, expected at least 1")
    total = sum(per_class.values()) * len(classes) * size * size * 3
    if total > MAX_BYTES:
        raise DataError(
            f"{total / 2**30:.1f} GiB of pixels, above the {MAX_BYTES / 2**30:.0f} GiB cap; "
            "ask for fewer or smaller images"
        )
    splits: dict[str, list[Item]] = {}
    for split, n in per_class.items():
        items = []
        for i in range(n):  # interleaved classes, so a shard prefix is class-balanced
            for label, shape in enumerate(classes):
                rng = np.random.default_rng([seed, SPLIT_IDS[split], label, i])
                items.append(
                    Item(label, f"shapes/{split}/{shape}/{i:06d}", render(shape, rng, size))
                )
        splits[split] = items
    return Dataset("shapes", list(classes), splits)
