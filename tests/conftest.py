"""Shared fixtures: small, real image folders written with Pillow (session-scoped, built once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DIGITS_PER_CLASS = 20
SHAPES = ("circle", "square", "triangle")
SHAPES_PER_CLASS = 12


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 ``(1797, 8, 8)`` (0..16 -> round(x * 255 / 16)) and targets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255.0 / 16.0).astype(np.uint8), d.target


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """ImageFolder of 8x8 grey PNG digits: ``<root>/<digit>/<index>.png``, 20 per class.

    ``<index>`` (4 digits) is the image's position in ``sklearn.datasets.load_digits``, so
    ``digits/3/0017.png`` is builtin id ``digits:17``.
    """
    root = tmp_path_factory.mktemp("digits")
    pixels, target = digits_uint8()
    for label in range(10):
        (root / str(label)).mkdir()
        for i in np.flatnonzero(target == label)[:DIGITS_PER_CLASS]:
            Image.fromarray(pixels[i]).save(root / str(label) / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory):
    """ImageFolder of RGB shapes (circle, square, triangle), 12 each, of varied sizes and aspects.

    Sizes run from 24x24 to 40x56 (height x width); colours and positions vary; PNG files.
    """
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        (root / shape).mkdir()
        for k in range(SHAPES_PER_CLASS):
            h, w = int(rng.integers(24, 41)), int(rng.integers(24, 57))
            back = tuple(int(v) for v in rng.integers(0, 80, 3))
            fore = tuple(int(v) for v in rng.integers(150, 256, 3))
            im = Image.new("RGB", (w, h), back)
            d = ImageDraw.Draw(im)
            s = int(min(h, w) * rng.uniform(0.5, 0.8))
            x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if shape == "circle":
                d.ellipse([x0, y0, x0 + s, y0 + s], fill=fore)
            elif shape == "square":
                d.rectangle([x0, y0, x0 + s, y0 + s], fill=fore)
            else:
                d.polygon([(x0 + s // 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=fore)
            im.save(root / shape / f"{k:02d}.png")
    return root


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A 3-epoch digits run with model.onnx, trained once and shared by the session's tests."""
    base = tmp_path_factory.getbasetemp() / "deploy-digits-run"
    run = base / "digits-cnn"
    if not (run / "model.onnx").exists():
        from convspec.compiler.training import train
        from convspec.specs import load_spec

        spec = load_spec(REPO / "examples" / "digits.yaml", overrides=["training.epochs=3"])
        train(spec, out=base, progress=False, export=True, log=lambda _m: None)
    return run
