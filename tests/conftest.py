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
        from convspec.compiler.training.loop import train
        from convspec.specs import load_spec

        spec = load_spec(REPO / "examples" / "digits.yaml", overrides=["training.epochs=3"])
        train(spec, out=base, progress=False, export=True, log=lambda _m: None)
    return run


class Band:
    """A hand-built ONNX model whose answers are known, and images for it.

    uint8 (N, 1, 6, 6) -> softmax over classes a, b, c; class j's logit is 0.05 x the sum of
    rows 2j and 2j+1, so an image bright in rows 2j, 2j+1 (``save(path, j)``) is class j.
    """

    H = W = 6
    CLASSES = ("a", "b", "c")

    def model(self, path: Path) -> Path:
        import json

        import onnx
        from onnx import TensorProto, helper, numpy_helper

        H, W = self.H, self.W
        w = np.zeros((H * W, 3), np.float32)
        for j in range(3):
            band = np.zeros((H, W), np.float32)
            band[2 * j : 2 * j + 2] = 0.05
            w[:, j] = band.ravel()
        graph = helper.make_graph(
            [
                helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
                helper.make_node("Flatten", ["f"], ["flat"], axis=1),
                helper.make_node("MatMul", ["flat", "w"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            ],
            "band",
            [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 1, H, W])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
            [numpy_helper.from_array(w, "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        helper.set_model_props(
            model,
            {
                "convspec.classes": json.dumps(list(self.CLASSES)),
                "convspec.task": "multiclass",
                "convspec.channels": "1",
                "convspec.input_size": json.dumps([H, W]),
            },
        )
        onnx.save(model, path)
        return path

    def save(self, path: Path, j: int) -> Path:
        a = np.full((self.H, self.W), 10, np.uint8)
        a[2 * j : 2 * j + 2] = 250
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)
        return path


@pytest.fixture
def band() -> Band:
    return Band()
