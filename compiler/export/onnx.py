"""Run folder -> ``model.onnx`` (and ``model.int8.onnx``), checked against PyTorch at every export.

Phases, in order: load the run's spec and best weights; export with the dynamo exporter
(uint8 ``(N, C, H, W)`` in, probabilities out, a dynamic batch axis); add the convspec
metadata; ``onnx.checker`` (full check); compare ONNX Runtime with PyTorch on the run's test
images (topped up from val/train; :mod:`.parity`); only then write the file,
atomically. With ``export.quantize: int8`` (or ``int8=True``) a statically quantized copy
follows (QDQ, per-channel weights, calibrated on training images), scored beside fp32.

The exporter's console chatter (``[torch.onnx] ...`` progress lines, "torchvision is not
installed" warnings, FutureWarnings) is captured and shown only when the export fails.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convspec.runtime.compare import not_a_fold_hint
from convspec.runtime.files import atomic_write, atomic_write_bytes
from convspec.runtime.metadata import PREFIX, ModelInfo, finite_metrics
from convspec.specs import Spec, load_spec_text
from convspec.specs.readfile import FileReadError

from ..data.dataset import SplitRows
from ..run import checkpoint, report
from ..run.checkpoint_format import load_weights
from ..run.files import writing
from ..run.folder import Run
from .checks import check_run_writable, check_spec_file
from .errors import ExportError
from .fold import fold_for_export
from .parity import (
    PARITY_BYTES,
    PARITY_IMAGES,
    PARITY_MAX,
    check_parity,
    ort_scores,
    parity_indices,
    take,
    torch_probabilities,
)
from .registry import reused_registry

INT8_MAX_LOSS = 0.005  # accuracy an INT8 model may lose before the log says so (0.5 pt)
TIMING_IMAGES = 256  # images timed per model for the INT8 speed ratio


def export_onnx(run: Run | str | os.PathLike, *, int8: bool | None = None, log: Callable[[str], None] = print) -> Path:
    """Export a trained run to ``model.onnx``, verified against PyTorch.

    Args:
        run: a run folder (``runs/NAME``) or its :class:`Run`.
        int8: also write ``model.int8.onnx``; None follows the spec's ``export.quantize``.
        log: where progress and results go.

    Returns:
        The path of ``model.onnx``.

    Raises:
        ExportError: no checkpoint, the exporter fails, the model fails ``onnx.checker``, or
            ONNX Runtime disagrees with PyTorch (top-1 agreement below 100 %, or a probability
            differing by more than 1e-4); ``model.onnx`` is then not left behind.
        CheckpointError, SpecError, DataError: an unusable checkpoint, spec or data.
    """
    run = run if isinstance(run, Run) else Run(Path(run))
    record_export(run, export_model(run, int8=int8, log=log), log)
    return run.onnx


def export_model(
    run: Run, *, int8: bool | None = None, log: Callable[[str], None] = print, images: ExportImages | None = None
) -> dict:
    """The export itself: write ``model.onnx`` (and ``model.int8.onnx``) and ``export.json``; return that record.

    :func:`export_onnx` is this followed by :func:`record_export`; ``convspec train`` runs the two
    apart, this one in a warm worker process (:mod:`.worker`) while it draws the pictures, and hands
    it the ``images`` it needs from the data it holds (else the run's data is loaded here).
    """
    t0 = time.perf_counter()
    spec, model, class_names, ckpt = _load_run(run)
    check_run_writable(run)  # Why before the export: fail in a second, not after a minute
    quantize = wants_int8(spec, int8)

    data, results = None, _read_results(run)
    threshold = _run_threshold(spec, results)
    if threshold is None and spec.task == "binary":  # a run without results.json (stopped before its test)
        data = _dataset(spec, run)
        threshold = _threshold_on_validation(spec, model, data, log)
    proto = _export_proto(model, spec)
    _add_metadata(proto, spec, class_names, results, threshold)
    _check(proto)
    if images is None or (quantize and images.calibration is None):
        images = export_images(spec, data if data is not None else _dataset(spec, run), int8=quantize)
    blob = proto.SerializeToString()
    try:
        parity = check_parity(model, blob, images.parity, spec.task)
    except ExportError:
        for stale in (run.onnx, run.onnx_int8):
            if stale.exists():
                stale.unlink()
                log(f"removed the stale {stale.name} (it no longer matches {ckpt.name})")
        raise
    with writing(run.onnx, "the model"):
        atomic_write_bytes(run.onnx, blob)
    info: dict[str, Any] = {
        "file": run.onnx.name,
        "checkpoint": ckpt.name,
        "opset": spec.export.opset,
        "dynamic_batch": spec.export.dynamic_batch,
        "size_bytes": len(blob),
        **parity,
    }
    log(
        f"wrote {run.onnx} ({len(blob) / 1e6:.2f} MB): parity with PyTorch on {parity['images']} images: "
        f"top-1 agreement {parity['top1_agreement'] * 100:.2f} %, max |diff| {parity['max_abs_diff']:.1e}"
    )

    if quantize:
        info["int8"] = quantize_run(run, spec, blob, images, log=log)
    elif run.onnx_int8.exists():  # Why: quantized from the weights before these; records no longer name it
        run.onnx_int8.unlink()
        log(f"removed the stale {run.onnx_int8.name} (quantized from earlier weights; export --int8 writes a new one)")
    info["time_s"] = round(time.perf_counter() - t0, 2)
    run.write_json(run.export_json, info)
    return info


def wants_int8(spec: Spec, int8: bool | None) -> bool:
    """Whether an export writes ``model.int8.onnx``: ``int8`` when given, else the spec's ``export.quantize``."""
    return spec.export.quantize == "int8" if int8 is None else int8


@dataclass
class ExportImages:
    """The images an export reads, uint8 ``(N, C, H, W)``, picked from a decoded data set by :func:`export_images`.

    Why a class: ``convspec train`` sends these few to its export worker, which then never decodes
    the data set again (tens of thousands of photos, for 256 images).
    """

    parity: np.ndarray  # compared between PyTorch and ONNX Runtime
    calibration: np.ndarray | None = None  # INT8: the quantizer's calibration images (training split)
    scored_split: str = "test"  # INT8: fp32 and INT8 accuracy on this split
    scored: np.ndarray | SplitRows | None = None
    scored_labels: np.ndarray | None = None
    timing: np.ndarray | None = None  # INT8: the images timed for the speed ratio


def export_images(spec: Spec, data, *, int8: bool) -> ExportImages:
    """Pick what an export of ``spec`` reads from ``data`` (a :class:`..data.dataset.Dataset` with its split)."""
    most = min(PARITY_MAX, max(PARITY_IMAGES, PARITY_BYTES // max(1, math.prod(data.images.shape[1:]))))
    picked = ExportImages(parity=data.images[parity_indices(data.splits, spec.training.seed, most)])
    if not int8:
        return picked
    split = "test" if len(data.splits["test"]) else "val" if len(data.splits["val"]) else "train"
    idx = data.splits[split]
    scored = data.rows(split)  # read a batch at a time where scored; copied only if sent to the worker
    calib = take(data.splits["train"], spec.export.calibration_images, seed=spec.training.seed)
    if len(scored) < TIMING_IMAGES:
        timed = data.images[take(np.arange(len(data.images)), TIMING_IMAGES, 0)]
    else:
        timed = scored
    picked.calibration, picked.scored_split, picked.scored = data.images[calib], split, scored
    picked.scored_labels, picked.timing = data.labels[idx], timed[:TIMING_IMAGES]
    return picked


def record_export(run: Run, info: dict, log: Callable[[str], None] = print, results: dict | None = None) -> None:
    """Add the export record to ``results.json`` (``results``, else the file's) and rewrite ``report.md``."""
    results = _read_results(run, log) if results is None else results
    if not results:
        return
    results["export"] = info
    run.write_json(run.results, results)
    try:
        report.write_report(run.report, results)
    except KeyError as e:  # a hand-edited results.json without a key the report shows
        log(f"warning: could not update {run.report.name}: {run.results} has no key {e}")
    except Exception as e:  # Why: the model is written and checked; a report glitch must not undo that
        log(f"warning: could not update {run.report.name} ({type(e).__name__}: {e})")


def quantize_run(
    run: Run, spec: Spec, fp32: bytes, images: ExportImages, *, log: Callable[[str], None] = print
) -> dict:
    """Write ``model.int8.onnx`` and score it against fp32 (accuracy on test, speed).

    The INT8 model's metadata carries its own test metrics (the fp32 model's names, recomputed on
    its probabilities), not the fp32 model's: ``serve``'s ``/metadata`` shows what it serves.
    """
    from .quantize import quantize_int8, time_model

    blob = quantize_int8(fp32, images.calibration, spec.export.dynamic_batch)
    split, scored, labels = images.scored_split, images.scored, images.scored_labels
    (p32, info), (p8, _) = ort_scores(fp32, scored), ort_scores(blob, scored)
    acc32, acc8 = _accuracy(p32, labels, info), _accuracy(p8, labels, info)
    if info.test_metrics:
        blob = _with_test_metrics(blob, info, p8, labels) if split == "test" else _with_test_metrics(blob, info)
    with writing(run.onnx_int8, "the INT8 model"):
        atomic_write_bytes(run.onnx_int8, blob)
    t32, t8 = time_model(fp32, images.timing), time_model(blob, images.timing)
    speedup = t32 / t8 if t8 > 0 else float("nan")
    out = {
        "file": run.onnx_int8.name,
        "split": split,
        "images": len(scored),
        "accuracy": acc8,
        "fp32_accuracy": acc32,
        "speedup": speedup,
        "size_bytes": len(blob),
        "calibration_images": len(images.calibration),
    }
    log(
        f"wrote {run.onnx_int8} ({len(blob) / 1e6:.2f} MB): {split} accuracy {acc8 * 100:.2f} % "
        f"(fp32 {acc32 * 100:.2f} %), {speedup:.2f}x the speed of fp32"
    )
    if acc32 - acc8 > INT8_MAX_LOSS:
        log(
            f"warning: INT8 loses {(acc32 - acc8) * 100:.2f} points of {split} accuracy (more than "
            f"{INT8_MAX_LOSS * 100:.1f}); more calibration images (export.calibration_images) may help"
        )
    if speedup < 1.0:
        log(
            f"warning: INT8 is slower than fp32 here ({speedup:.2f}x); this CPU may lack fast int8 "
            "instructions (VNNI), or the model is too small to gain"
        )
    return out


# ------------------------------------------------------------------ phases


def _load_run(run: Run):
    """The run's spec (the checkpoint's), and its model in eval mode with the best (else last) weights."""
    from ..model.builder import assemble_model

    if not run.path.is_dir():
        raise ExportError(f"{run}: run folder not found" if not run.path.exists() else f"{run}: not a folder")
    ckpt = run.best if run.best.exists() else run.last
    if not ckpt.exists():
        raise ExportError(
            f"{run}: no best.pt or last.pt: is this a run folder written by convspec train?{not_a_fold_hint(run.path)}"
        )
    state = checkpoint.load(ckpt)
    spec = load_spec_text(state["spec"], f"{ckpt}[spec]")
    check_spec_file(run, spec, ckpt)
    class_names = state.get("class_names")
    from ..model.backbone import no_weight_loading

    with no_weight_loading():  # Why: the checkpoint has every weight; no download, no weights file needed
        model = assemble_model(spec, num_classes=len(class_names) if class_names else None, class_names=class_names)
    load_weights(model, state["model"], ckpt)
    broken = next((k for k, t in state["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if broken:
        raise ExportError(
            f"{ckpt}: the weights hold NaN or infinite values (first: {broken}); the run diverged or the file "
            "was edited, so there is no model to export"
        )
    model.eval()
    return spec, model, list(model.class_names or [str(i) for i in range(model.num_classes or 0)]), ckpt


@contextlib.contextmanager
def quiet_exporter() -> Iterator[io.StringIO]:
    """Capture what torch.onnx / onnxscript print or log; yields the captured text."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir", "onnx")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    try:
        for lg in loggers:
            lg.handlers = [handler]
            lg.propagate = False
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level, propagate, handlers in saved:
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers = handlers


def _export_proto(model: torch.nn.Module, spec: Spec):
    """The dynamo exporter's ModelProto: ``images`` uint8 (N, C, H, W) -> ``probabilities``.

    An eval-mode model goes out with its input affine folded into the first conv (:mod:`.fold`).
    """
    model = fold_for_export(model)
    c, (h, w) = spec.input.channels, spec.input.size
    dynamic = spec.export.dynamic_batch
    # Why batch 2 with a dynamic axis: torch.export specializes a size-1 dimension to a constant.
    example = torch.zeros((2 if dynamic else 1, c, h, w), dtype=torch.uint8)
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    shapes = _dynamic_shapes(model, shapes)
    with quiet_exporter() as captured, reused_registry():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                external_data=False,
                verbose=False,
                opset_version=spec.export.opset,
                input_names=["images"],
                output_names=["probabilities"],
                dynamic_shapes=shapes,
            )
            proto = program.model_proto
        except Exception as e:
            tail = "\n".join(captured.getvalue().strip().splitlines()[-15:])
            raise ExportError(
                f"ONNX export failed: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
                + (f"\nexporter output:\n{tail}" if tail else "")
            ) from e
    if dynamic:
        dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        dim.dim_param = "batch"
        out = proto.graph.output[0].type.tensor_type.shape.dim
        if out:
            out[0].dim_param = "batch"
    return proto


def _dynamic_shapes(model: torch.nn.Module, shapes):
    """Key the dynamic shapes by the forward's argument name (``x`` unless renamed)."""
    if shapes is None:
        return None
    import inspect

    params = [p for p in inspect.signature(model.forward).parameters.values() if p.name != "self"]
    return {params[0].name: shapes["x"]} if params else shapes


def _run_threshold(spec: Spec, results: dict) -> float | None:
    """A binary run's threshold: the one its results.json records, else a fixed ``export.threshold``;
    None for a rule the run has not chosen yet (and for multiclass)."""
    from convspec.runtime.threshold import threshold_from_results

    if spec.task != "binary":
        return None
    chosen = threshold_from_results(results)
    rule = spec.export.threshold
    return chosen if chosen is not None or not isinstance(rule, (int, float)) else float(rule)


def _threshold_on_validation(spec: Spec, model: torch.nn.Module, data, log: Callable[[str], None]) -> float:
    """``export.threshold``'s rule chosen on the run's validation split, as training's finish does."""
    from convspec.runtime.threshold import ThresholdWarning, choose_threshold, target_missed

    idx = data.splits["val"]
    probs = torch_probabilities(model, data.images[idx])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)  # said as a warning line below
        value = choose_threshold(data.labels[idx], probs, spec.export.threshold)
    log(f"threshold {value:.6g}: export.threshold chosen on the validation split (results.json holds none)")
    missed = target_missed(spec.export.threshold, data.labels[idx], probs, value)
    if missed:
        log(f"warning: {missed}")
    return value


def _add_metadata(proto, spec: Spec, class_names: list[str], results: dict, threshold: float | None) -> None:
    try:
        version = importlib.metadata.version("convspec")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    metrics = _test_metrics(results)
    info = ModelInfo(
        classes=tuple(class_names),
        task=spec.task,
        channels=spec.input.channels,
        size=tuple(spec.input.size),
        resize=spec.input.resize,
        bits_stored=spec.input.bits_stored,
        spec=spec.to_yaml(),
        version=version,
        test_metrics=metrics,
        threshold=threshold,
    )
    _set_props(proto, info.to_props())
    (h, w), c = spec.input.size, spec.input.channels
    proto.doc_string = f"convspec {spec.name}: uint8 images (N, {c}, {h}, {w}) -> probabilities"


def _check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"the exported model fails onnx.checker: {str(e).strip()[:500]}") from None


def _read_results(run: Run, log: Callable[[str], None] | None = None) -> dict:
    """The run's results.json, or {} (with a warning) when it is unreadable: export does not need it."""
    try:
        results = run.read_results()
    except FileReadError as e:  # a FIFO, a device, not JSON: its own message names it
        if log is not None:
            log(f"warning: {e}; leaving it as it is")
        return {}
    return results if isinstance(results, dict) else {}


def _test_metrics(results: dict) -> dict[str, float]:
    """results.json's finite test metrics (a hand-edited ``"test": 5`` gives none)."""
    test = results.get("test")
    return finite_metrics(test.get("metrics") if isinstance(test, dict) else None)


def _dataset(spec: Spec, run: Run):
    from ..data.loading import load_dataset

    split = str(run.split) if run.split.exists() else None
    return load_dataset(spec, split_file=split, log=lambda _m: None)


def _accuracy(probs: np.ndarray, labels: np.ndarray, info: ModelInfo) -> float:
    """Accuracy at the model's own threshold (binary; 0.5 without one), as its test metrics count it."""
    from convspec.runtime.metrics import predictions

    if len(probs) == 0:
        return float("nan")
    threshold = 0.5 if info.threshold is None else info.threshold
    return float((predictions(probs, info.task, threshold) == labels).mean())


def _with_test_metrics(blob: bytes, info: ModelInfo, probs: np.ndarray | None = None, labels=None) -> bytes:
    """``blob`` with ``convspec.test_metrics`` recomputed from its own test ``probs`` (the fp32
    model's metric names), or without the entry when there are none."""
    import onnx

    from convspec.runtime.metrics import METRICS, compute

    metrics = {}
    if probs is not None and len(probs):
        threshold = 0.5 if info.threshold is None else info.threshold
        names = [n for n in info.test_metrics if n in (*METRICS, "ece")]
        got = compute(names, labels, probs, info.task, threshold=threshold, num_classes=len(info.classes))
        metrics = finite_metrics(got)
    model = onnx.load_from_string(blob)
    _set_props(model, replace(info, test_metrics=metrics).to_props(), drop=f"{PREFIX}test_metrics")
    return model.SerializeToString()


def _set_props(proto, props: dict[str, str], drop: str = "") -> None:
    """Write ``props`` into a ModelProto's metadata, replacing same-named entries (and ``drop``)."""
    keep = [p for p in proto.metadata_props if p.key not in props and p.key != drop]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_to_file(
    model: torch.nn.Module, spec: Spec, path: str | os.PathLike, class_names: list[str] | None = None
) -> Path:
    """Export a built model (any weights) with metadata, unchecked against data: for benchmarks and tests."""
    proto = _export_proto(model.eval(), spec)
    names = class_names or list(model.class_names or [str(i) for i in range(model.num_classes or 2)])
    _add_metadata(proto, spec, names, {}, _run_threshold(spec, {}))
    _check(proto)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(proto.SerializeToString()))


__all__ = [
    "ExportError",
    "ExportImages",
    "export_images",
    "export_model",
    "export_onnx",
    "export_to_file",
    "quantize_run",
    "quiet_exporter",
    "record_export",
    "wants_int8",
]
