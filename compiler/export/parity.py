"""PyTorch against ONNX Runtime on the same uint8 images: which images (:func:`parity_indices`),
both engines' probabilities, and :func:`check_parity`, which every export passes before its file
is written.
"""

from __future__ import annotations

import numpy as np
import torch

from convspec.runtime.metadata import ModelInfo

from ..data.memory import images_per_batch
from .errors import ExportError

PARITY_IMAGES = 256  # compare PyTorch and ORT on at least this many images (when the data has them)
PARITY_MAX = 2048  # and on at most this many: a seeded sample of a larger test split,
PARITY_BYTES = 64 << 20  # and of at most this many uint8 pixels above PARITY_IMAGES (445 images at 3x224x224)
MAX_ABS_DIFF = 1e-4  # largest probability difference accepted between PyTorch and ORT


def parity_indices(splits: dict[str, np.ndarray], seed: int, most: int = PARITY_MAX) -> np.ndarray:
    """The test images (a seeded sample of ``most`` when there are more), topped up with val then
    train images to ``PARITY_IMAGES``."""
    idx = list(take(splits.get("test", np.zeros(0, np.int64)), most, seed))
    for name in ("val", "train"):
        if len(idx) >= PARITY_IMAGES:
            break
        idx += list(splits.get(name, [])[: PARITY_IMAGES - len(idx)])
    return np.asarray(idx, dtype=np.int64)


@torch.inference_mode()
def torch_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """PyTorch eval-mode probabilities of uint8 ``(N, C, H, W)`` images, on the CPU, in batches."""
    step = images_per_batch(images.shape[1:])
    outs = [
        model(torch.from_numpy(np.ascontiguousarray(images[i : i + step]))).float().numpy()
        for i in range(0, len(images), step)
    ]
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)


def ort_probabilities(blob: bytes, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU provider, full optimization) probabilities of uint8 images."""
    return ort_scores(blob, images)[0]


def _top1(probs: np.ndarray, task: str) -> np.ndarray:
    from convspec.runtime.metrics import predictions

    return predictions(probs, "binary" if task == "binary" or probs.shape[1] == 1 else task)


def check_parity(model: torch.nn.Module, blob: bytes, images: np.ndarray, task: str) -> dict:
    """Compare ORT with PyTorch; raise ExportError on a real disagreement.

    A top-1 flip between classes whose PyTorch probabilities are within ``MAX_ABS_DIFF`` of
    each other (a tie at float precision) counts as agreement: either answer is right.
    """
    if len(images) == 0:
        raise ExportError("no images to check the exported model against PyTorch")
    ref = torch_probabilities(model, images)
    got = ort_probabilities(blob, images)
    if ref.shape != got.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
    diff = float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size else 0.0
    a, b = _top1(ref, task), _top1(got, task)
    if task == "binary" or ref.shape[1] == 1:
        tie = np.abs(ref[:, 0] - 0.5) <= MAX_ABS_DIFF
    else:
        tie = ref.max(axis=1) - ref[np.arange(len(ref)), b] <= MAX_ABS_DIFF
    agree = (a == b) | tie
    agreement = float(agree.mean())
    finite = bool(np.isfinite(got).all())
    if agreement < 1.0 or not diff <= MAX_ABS_DIFF or not finite:
        raise ExportError(
            f"the ONNX model does not match PyTorch on {len(images)} images: top-1 agreement "
            f"{agreement * 100:.2f} % ({int((~agree).sum())} differ), max |diff| {diff:.2e} "
            f"(allowed {MAX_ABS_DIFF:g}); model.onnx was not written"
        )
    return {
        "images": len(images),
        "top1_agreement": agreement,
        "max_abs_diff": diff,
        "exact_top1_agreement": float((a == b).mean()),
    }


def ort_scores(blob: bytes, images: np.ndarray) -> tuple[np.ndarray, ModelInfo]:
    """ONNX Runtime (CPU provider, full optimization) probabilities of uint8 images, and the model's metadata."""
    from convspec.runtime import Predictor

    predictor = Predictor(blob, providers="cpu")
    step = images_per_batch(images.shape[1:])
    outs = [predictor.predict_arrays(images[i : i + step]) for i in range(0, len(images), step)]
    return (np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)), predictor.info


def take(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` of ``idx``, a fixed random choice (sorted)."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
