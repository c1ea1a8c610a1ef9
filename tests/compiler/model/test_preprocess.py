"""Preprocess steps against NumPy / Pillow references, and ONNX export parity with ORT."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from convspec.compiler.model.builder import build_model
from convspec.compiler.model.preprocess import build_preprocess, gaussian_kernel1d
from convspec.specs import SpecError, spec_from_dict
from convspec.specs.shapes import preprocess_shape

torch.set_num_threads(1)

NO_DATA = "/nonexistent-convspec-test-data"


def make_spec(preprocess, *, channels=3, size=(12, 10), layers=({"type": "global_avg_pool"},), classes=3):
    return spec_from_dict(
        {
            "version": 1,
            "task": "multiclass",
            "classes": classes,
            "data": {"source": {"type": "folder", "path": NO_DATA}},
            "input": {"channels": channels, "size": list(size)},
            "preprocess": list(preprocess),
            "model": {"layers": list(layers)},
        }
    )


def pixels(n=2, c=3, h=12, w=10, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def run(steps, x, **kw) -> np.ndarray:
    spec = make_spec(steps, channels=x.shape[1], size=x.shape[2:], **kw)
    pre = build_preprocess(spec)
    assert pre.out_shape == preprocess_shape(spec)
    with torch.no_grad():
        out = pre(x)
    assert out.dtype == torch.float32 and tuple(out.shape[1:]) == pre.out_shape
    return out.numpy()


# --------------------------------------------------------------- references


def test_empty_list_scales_to_unit_range():
    x = pixels()
    np.testing.assert_allclose(run([], x), x.numpy() / 255.0, rtol=1e-6)


def test_leading_rescale_replaces_the_default_scaling():
    x = pixels()
    out = run([{"type": "rescale", "scale": 0.5, "offset": -3.0}], x)
    np.testing.assert_allclose(out, x.numpy() * 0.5 - 3.0, rtol=1e-6)
    later = run([{"type": "center_crop", "size": [12, 10]}, {"type": "rescale", "scale": 2.0}], x)
    np.testing.assert_allclose(later, x.numpy() / 255.0 * 2.0, rtol=1e-6)


def test_normalize_matches_numpy():
    x = pixels()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = run([{"type": "normalize", "mean": mean, "std": std}], x)
    ref = (x.numpy() / 255.0 - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_center_crop_and_crop_slice():
    x = pixels(h=12, w=10)
    out = run([{"type": "center_crop", "size": [7, 4]}], x)
    np.testing.assert_allclose(out, x.numpy()[:, :, 2:9, 3:7] / 255.0, rtol=1e-6)  # floor((12-7)/2)=2
    out = run([{"type": "crop", "box": [1, 2, 5, 8]}], x)
    np.testing.assert_allclose(out, x.numpy()[:, :, 1:6, 2:10] / 255.0, rtol=1e-6)


def test_grayscale_matches_pillow_L():
    x = pixels(n=3, h=9, w=11)
    out = run([{"type": "grayscale"}], x)
    assert out.shape == (3, 1, 9, 11)
    for i in range(3):
        ref = np.asarray(Image.fromarray(x[i].permute(1, 2, 0).numpy(), "RGB").convert("L"), dtype=np.float64) / 255
        assert np.abs(out[i, 0] - ref).max() <= 1 / 255


def _reflect(img: np.ndarray, r: int) -> np.ndarray:
    return np.pad(img, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")


@pytest.mark.parametrize(("kernel", "sigma"), [(3, 0.8), (5, None), (7, 2.5)])
def test_gaussian_matches_numpy_convolution(kernel, sigma):
    x = pixels(h=12, w=10)
    step = {"type": "denoise", "method": "gaussian", "kernel": kernel} | ({"sigma": sigma} if sigma else {})
    out = run([step], x)
    s = sigma if sigma else 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # OpenCV's default
    t = np.arange(kernel) - kernel // 2
    g = np.exp(-(t**2) / (2 * s * s))
    k2 = np.outer(g, g) / np.outer(g, g).sum()
    r = kernel // 2
    padded = _reflect(x.numpy().astype(np.float64) / 255, r)
    ref = np.zeros(x.shape)
    for i in range(kernel):
        for j in range(kernel):
            ref += k2[i, j] * padded[:, :, i : i + 12, j : j + 10]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(gaussian_kernel1d(kernel, s).numpy(), g / g.sum(), atol=1e-7)


@pytest.mark.parametrize("kernel", [3, 5])
def test_median_matches_numpy(kernel):
    x = pixels(h=12, w=10)
    out = run([{"type": "denoise", "method": "median", "kernel": kernel}], x)
    r = kernel // 2
    windows = np.lib.stride_tricks.sliding_window_view(
        _reflect(x.numpy() / np.float32(255), r), (kernel, kernel), axis=(2, 3)
    )
    ref = np.median(windows.reshape(*x.shape, -1), axis=-1)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_steps_chain_and_shapes():
    x = pixels(h=12, w=10)
    steps = [
        {"type": "crop", "box": [0, 0, 10, 10]},
        {"type": "grayscale"},
        {"type": "center_crop", "size": [6, 6]},
        {"type": "normalize", "mean": [0.5], "std": [0.25]},
    ]
    out = run(steps, x)
    gray = (x.numpy()[:, :, :10, :10] / 255.0 * np.array([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)).sum(
        1, keepdims=True
    )
    np.testing.assert_allclose(out, (gray[:, :, 2:8, 2:8] - 0.5) / 0.25, atol=1e-5)


def test_trailing_crops_and_affines_are_one_multiply_add_with_the_same_pixels():
    x = pixels(h=12, w=10).contiguous(memory_format=torch.channels_last)
    steps = [
        {"type": "denoise", "method": "median", "kernel": 3},
        {"type": "rescale", "scale": 2.0, "offset": -1.0},
        {"type": "center_crop", "size": [8, 8]},
        {"type": "normalize", "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]},
        {"type": "crop", "box": [1, 2, 5, 4]},
        {"type": "rescale", "scale": 3.0},
    ]
    spec = make_spec(steps, size=(12, 10))
    pre = build_preprocess(spec)
    assert pre.affine_from == 1  # after the median: rescale, crop, normalize, crop, rescale
    ref = x.float() / 255.0  # the steps one by one, as the spec lists them
    for step in pre.steps:
        ref = step(ref)
    with torch.no_grad():
        out = pre(x)
    assert out.shape == ref.shape == (2, 3, 5, 4)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    floats = x.float()
    kept = floats.clone()
    np.testing.assert_allclose(pre(floats).numpy(), out.numpy(), rtol=1e-6)  # a float input is not written to
    assert torch.equal(floats, kept)
    head_only = build_preprocess(make_spec([{"type": "normalize", "mean": [0.5] * 3, "std": [0.25] * 3}]))
    assert pre(x).dtype == torch.float32 and head_only(x).is_contiguous(memory_format=torch.channels_last)


def test_denoise_kernel_too_large_for_image_is_a_spec_error():
    """Refused when the spec is validated (at its line), before any module is built."""
    with pytest.raises(SpecError, match="too large"):
        make_spec([{"type": "center_crop", "size": [4, 4]}, {"type": "denoise", "kernel": 9}])


def test_normalize_auto_is_identity_until_set():
    x = pixels()
    np.testing.assert_allclose(run([{"type": "normalize", "mean": "auto"}], x), x.numpy() / 255.0, rtol=1e-6)


# ------------------------------------------------------------- ONNX parity


@pytest.fixture
def quiet_exporter():
    """The exporter logs a warning per skipped torchvision op and a pytree FutureWarning."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
    logger.setLevel(level)


def export_and_compare(module: torch.nn.Module, x: torch.Tensor, path, other: torch.Tensor) -> None:
    """Export with a dynamic batch axis; ORT on a differently sized batch agrees to 1e-5."""
    module = module.eval()
    torch.onnx.export(
        module,
        (x,),
        str(path),
        dynamo=True,
        external_data=False,
        verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=["pixels"],
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, other):
        got = sess.run(None, {"pixels": batch.numpy()})[0]
        with torch.no_grad():
            want = module(batch).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


STEPS = [
    pytest.param([], id="scale-only"),
    pytest.param([{"type": "rescale", "scale": 0.01, "offset": -1.0}], id="rescale"),
    pytest.param([{"type": "normalize", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}], id="normalize"),
    pytest.param([{"type": "center_crop", "size": [7, 6]}], id="center_crop"),
    pytest.param([{"type": "crop", "box": [2, 1, 8, 5]}], id="crop"),
    pytest.param([{"type": "denoise", "method": "gaussian", "kernel": 5, "sigma": 1.2}], id="gaussian"),
    pytest.param([{"type": "denoise", "method": "median", "kernel": 3}], id="median"),
    pytest.param([{"type": "grayscale"}], id="grayscale"),
]


@pytest.mark.parametrize("steps", STEPS)
def test_preprocess_step_exports_to_onnx(steps, tmp_path, quiet_exporter):
    pre = build_preprocess(make_spec(steps))
    export_and_compare(pre, pixels(n=2), tmp_path / "pre.onnx", pixels(n=3, seed=1))


def test_full_model_exports_to_onnx(tmp_path, quiet_exporter):
    layers = [
        {"type": "conv", "filters": 4, "kernel": 3, "stride": 2, "batch_norm": True, "activation": "relu"},
        {"type": "residual", "layers": [{"type": "conv", "filters": 6, "kernel": 3, "batch_norm": True}]},
        {"type": "max_pool", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 8, "activation": "gelu"},
        {"type": "dropout", "rate": 0.2},
    ]
    steps = [
        {"type": "denoise", "kernel": 3},
        {"type": "center_crop", "size": [10, 10]},
        {"type": "normalize", "mean": "auto"},
    ]
    model = build_model(make_spec(steps, layers=layers, size=(12, 12)))
    model.set_normalization([0.4, 0.5, 0.6], [0.2, 0.3, 0.4])
    export_and_compare(model, pixels(n=2, h=12, w=12), tmp_path / "model.onnx", pixels(n=5, h=12, w=12, seed=2))
