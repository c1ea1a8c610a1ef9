"""Write a small RGB ImageFolder data set of coloured shapes: circle/, square/, triangle/.

Usage:
    python examples/shapes/make_shapes.py [OUT_FOLDER] [--per-class N] [--size S] [--seed K]

The default folder is examples/data/shapes (git-ignored), where examples/shapes.yaml
looks for it. Seeded: the same arguments always write the same pixels.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "shapes"


def _colour(rng: np.random.Generator, avoid: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """A random colour, kept visibly different from ``avoid`` (the background)."""
    while True:
        c = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if avoid is None or sum(abs(a - b) for a, b in zip(c, avoid, strict=True)) > 150:
            return c  # type: ignore[return-value]


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` RGB image with one shape of random colour, place and size."""
    background = _colour(rng)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    fill = _colour(rng, avoid=background)
    r = rng.uniform(0.25, 0.42) * size  # half the shape's extent
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        angle = rng.uniform(0, math.pi / 2)
        corners = [
            (cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2)) for k in range(4)
        ]
        draw.polygon(corners, fill=fill)
    elif kind == "triangle":
        angle = rng.uniform(0, 2 * math.pi)
        corners = [
            (cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
        draw.polygon(corners, fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(CLASSES)}")
    return img


def make_shapes(out: Path, per_class: int = 300, size: int = 64, seed: int = 0) -> int:
    """Write ``per_class`` PNGs per class under ``out/<class>/``; returns the number written."""
    rng = np.random.default_rng(seed)
    n = 0
    for kind in CLASSES:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, size, rng).save(folder / f"{kind}_{i:04d}.png")
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--per-class", type=int, default=300, help="images per class (default: 300)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    n = make_shapes(args.out, args.per_class, args.size, args.seed)
    print(f"wrote {n} images of {', '.join(CLASSES)} to {args.out}")


if __name__ == "__main__":
    main()
