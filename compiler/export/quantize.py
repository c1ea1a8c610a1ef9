"""Static INT8 quantization of an exported model with ONNX Runtime's tools, and a timer.

``quant_pre_process`` (shape inference + graph optimization), then ``quantize_static`` in the
QDQ format: per-channel int8 weights, uint8 activations calibrated (min/max) on training
images. Only the compute-heavy ops are quantized (convolutions, matrix products, pools, adds);
the uint8->float preprocessing at the input and the softmax/sigmoid at the output stay in
float, so the model still takes uint8 pixels and returns probabilities that sum to 1. Before
quantizing, ``int8_graph.prepare_for_int8`` rewrites the graph (equal outputs) so that ORT's
int8 kernels pay off on small models: a short stem convolution stays in float, and a flatten
before a dense layer happens channels-last.

Why uint8 activations with int8 weights (U8S8): it is the combination ORT's x86 kernels
run fastest (VNNI), and what ORT's documentation recommends for CPUs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import ExportError

CALIBRATION_BATCH = 32
OPS = ["Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Relu", "Clip", "Flatten"]


class _Reader:
    """An ORT ``CalibrationDataReader`` over uint8 images ``(N, C, H, W)``."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self.name, self.images, self.batch, self.pos = name, images, batch, 0

    def get_next(self):
        if self.pos >= len(self.images):
            return None
        chunk = self.images[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.name: np.ascontiguousarray(chunk)}

    def rewind(self):
        self.pos = 0


def quantize_int8(fp32: bytes, calibration: np.ndarray, dynamic_batch: bool = True) -> bytes:
    """The INT8 (QDQ) version of a serialized fp32 model, calibrated on uint8 ``calibration`` images.

    Args:
        fp32: the fp32 model (``model.onnx``'s bytes).
        calibration: uint8 ``(N, C, H, W)`` training images.
        dynamic_batch: whether the model's batch axis is dynamic (else images go one by one).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .int8_graph import prepare_for_int8

    if len(calibration) == 0:
        raise ExportError("INT8 quantization needs calibration images; the training split is empty")
    model = onnx.load_from_string(fp32)
    name = model.graph.input[0].name
    props = [(p.key, p.value) for p in model.metadata_props]

    class Reader(_Reader, CalibrationDataReader):
        pass

    reader = Reader(name, calibration, CALIBRATION_BATCH if dynamic_batch else 1)
    with tempfile.TemporaryDirectory(prefix="convspec-int8-") as d:
        src, pre, out = (os.path.join(d, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32)
        with _quiet():
            try:
                quant_pre_process(src, pre, skip_symbolic_shape=False)
            except Exception:  # Why: symbolic shape inference fails on some graphs; ONNX's is enough here
                quant_pre_process(src, pre, skip_symbolic_shape=True)
            pre_model = onnx.load(pre)
            keep_float = prepare_for_int8(pre_model)
            onnx.save(pre_model, pre)
            quantize_static(
                pre,
                out,
                reader,
                nodes_to_exclude=keep_float,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=OPS,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        q = onnx.load(out)
    # Why copy the metadata again: the pre-processing pass rebuilds the model and drops it.
    have = {p.key for p in q.metadata_props}
    for key, value in props:
        if key not in have:
            entry = q.metadata_props.add()
            entry.key, entry.value = key, value
    return q.SerializeToString()


@contextlib.contextmanager
def _quiet():
    """ORT's quantization tools log and print progress; keep it off the user's screen."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield buf
    finally:
        root.setLevel(level)


def time_model(
    blob: bytes, images: np.ndarray, *, batch: int = 64, repeats: int = 3, threads: int | None = None
) -> float:
    """Seconds to run ``images`` through a model in batches (best of ``repeats``, after a warm-up).

    Both models of a comparison should be timed with the same ``threads`` in the same process.
    """
    from convspec.runtime import Predictor

    p = Predictor(blob, providers="cpu", intra_op_threads=threads)
    p.predict_arrays(images[:batch])  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(images), batch):
            p.predict_arrays(images[i : i + batch])
        best = min(best, time.perf_counter() - t)
    return best
