"""What an exported model says about itself: the ``convspec.*`` entries of its ONNX metadata.

``convspec export`` writes these keys into ``metadata_props`` (all values are strings):

| key | value |
|---|---|
| ``convspec.format`` | metadata version, ``1`` |
| ``convspec.classes`` | JSON list of class names, in output order |
| ``convspec.task`` | ``binary`` or ``multiclass`` |
| ``convspec.channels`` | ``1`` or ``3`` |
| ``convspec.input_size`` | JSON ``[height, width]`` |
| ``convspec.resize`` | ``stretch``, ``letterbox`` or ``crop`` |
| ``convspec.bits_stored`` | 16-bit grey pixels hold values up to ``2**bits_stored - 1`` (absent: 16) |
| ``convspec.layout`` | ``NCHW uint8`` |
| ``convspec.output`` | ``probabilities`` |
| ``convspec.spec`` | the resolved spec (YAML) |
| ``convspec.version`` | the convspec version that exported it |
| ``convspec.test_metrics`` | JSON of the run's test metrics (absent without a test split) |
| ``convspec.threshold`` | binary models: the operating threshold on the positive class's probability (absent: 0.5) |

A model without them (exported by another tool) still runs: labels are numbered from the
output width, channels and size come from the input shape, and a warning says so.
Torch-free.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from convspec.specs.classes import BITS_STORED, class_names_problem
from convspec.specs.readfile import parse_json

from .session import ModelError, open_session

FORMAT = "1"
PREFIX = "convspec."
LAYOUT = "NCHW uint8"
KEYS = (
    "format",
    "classes",
    "task",
    "channels",
    "input_size",
    "resize",
    "bits_stored",
    "layout",
    "output",
    "spec",
    "version",
    "test_metrics",
    "threshold",
)


RESIZE_MODES = ("stretch", "letterbox", "crop")
# Why a bound: the loader allocates batch x C x H x W bytes; an input_size of [100000, 100000]
# in a hand-made file would ask for gigabytes per image.
MAX_SIDE = 8192
MAX_JSON = 1 << 20


class MetadataWarning(UserWarning):
    """A model without (complete) convspec metadata: numbered labels, shape from the graph."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model takes and returns, read from its metadata (or guessed from its graph).

    Attributes:
        classes: class names in output order (``"0"``, ``"1"``... without metadata).
        task: ``binary`` (output ``(N, 1)``: probability of ``classes[1]``) or ``multiclass``.
        channels: 1 or 3.
        size: ``(height, width)``.
        resize: how images are fitted to ``size`` on load.
        bits_stored: how 16-bit grey images are scaled to 8 bits on load (see ``load_image``).
        spec: the spec's YAML text ("" when absent).
        version: the convspec version that exported it ("" when absent).
        test_metrics: the run's test metrics at export time ({} when absent).
        has_metadata: whether the model carries convspec metadata.
        threshold: binary models: label the positive class when its probability is >= this
            (None: 0.5, the default). Probabilities are never changed by it.
    """

    classes: tuple[str, ...]
    task: str
    channels: int
    size: tuple[int, int]
    resize: str = "stretch"
    bits_stored: int = 16
    spec: str = ""
    version: str = ""
    test_metrics: dict[str, Any] = field(default_factory=dict)
    has_metadata: bool = True
    threshold: float | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.channels, *self.size)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries that encode this (what the exporter writes)."""
        props = {
            "format": FORMAT,
            "classes": json.dumps(list(self.classes)),
            "task": self.task,
            "channels": str(self.channels),
            "input_size": json.dumps(list(self.size)),
            "resize": self.resize,
            "layout": LAYOUT,
            "output": "probabilities",
            "spec": self.spec,
            "version": self.version,
        }
        if self.bits_stored != 16:  # Why only then: a model for 8-bit or full-range images reads as before
            props["bits_stored"] = str(self.bits_stored)
        if self.test_metrics:
            props["test_metrics"] = json.dumps(self.test_metrics)
        if self.threshold is not None:
            props["threshold"] = repr(float(self.threshold))
        return {PREFIX + k: v for k, v in props.items()}


def from_props(
    props: dict[str, str],
    input_shape: tuple,
    output_width: int | None,
    *,
    source: str = "model",
) -> ModelInfo:
    """Build a :class:`ModelInfo` from metadata entries and the graph's shapes.

    Args:
        props: ``metadata_props`` as a dict (ORT's ``custom_metadata_map`` or onnx's list).
        input_shape: the input's shape, ``(N, C, H, W)``; dims may be names or None.
        output_width: the output's last dimension, when static.
        source: how to name the model in warnings.

    Raises:
        ValueError: metadata present but malformed (classes not a JSON list of unique names,
            input_size not two sides 1..MAX_SIDE, an unknown task or resize mode, channels
            not 1 or 3, bits_stored not 8..16), an output width that differs from the class list, or a graph that
            tells neither channels nor size (the caller turns it into a ModelError).
    """
    ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
    if "classes" in ours and "channels" in ours and "input_size" in ours:
        classes = _classes(ours["classes"], source)
        size = _size(ours["input_size"], source)
        channels = _int(ours["channels"], "channels", source)
        try:
            threshold = float(ours["threshold"]) if ours.get("threshold") else None
        except ValueError:
            raise ValueError(f"{source}: malformed convspec metadata: convspec.threshold is not a number") from None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{source}: malformed convspec metadata (threshold {threshold} is not in [0, 1])")
        if channels not in (1, 3):
            raise ValueError(
                f"{source}: malformed convspec metadata: convspec.channels must be 1 or 3 (got {channels})"
            )
        task = ours.get("task") or ("binary" if output_width == 1 else "multiclass")
        if task not in ("binary", "multiclass"):
            raise ValueError(
                f"{source}: malformed convspec metadata: convspec.task must be binary or multiclass (got {task!r})"
            )
        resize = ours.get("resize") or "stretch"
        if resize not in RESIZE_MODES:
            raise ValueError(
                f"{source}: malformed convspec metadata: convspec.resize must be one of {', '.join(RESIZE_MODES)} "
                f"(got {_clip(resize)!r})"
            )
        bits_stored = _int(ours["bits_stored"], "bits_stored", source) if ours.get("bits_stored") else 16
        if not BITS_STORED[0] <= bits_stored <= BITS_STORED[1]:
            raise ValueError(
                f"{source}: malformed convspec metadata: convspec.bits_stored must be "
                f"{BITS_STORED[0]} to {BITS_STORED[1]} (got {bits_stored})"
            )
        if task == "binary" and len(classes) != 2:
            raise ValueError(
                f"{source}: malformed convspec metadata: a binary model has 2 classes (got {len(classes)})"
            )
        check_output_width(output_width, task, classes, source)
        try:
            metrics = parse_json(ours["test_metrics"]) if ours.get("test_metrics") else {}
        except ValueError:
            metrics = None
        if not isinstance(metrics, dict):
            warnings.warn(
                f"{source}: convspec.test_metrics is not a JSON object; ignored", MetadataWarning, stacklevel=3
            )
            metrics = {}
        # Why only finite numbers: NaN is not JSON, and GET /metadata answered 500 for an edited model
        metrics = finite_metrics(metrics)
        return ModelInfo(
            classes=classes,
            task=task,
            channels=channels,
            size=size,
            resize=resize,
            bits_stored=bits_stored,
            spec=ours.get("spec", ""),
            version=ours.get("version", ""),
            test_metrics=metrics,
            threshold=threshold if task == "binary" else None,
        )

    # No convspec metadata: read what the graph says.
    c, h, w = input_shape[1:] if len(input_shape) == 4 else (None, None, None)
    if not all(isinstance(d, int) and d > 0 for d in (c, h, w)):
        raise ValueError(
            f"{source}: no convspec metadata and the input shape {list(input_shape)} "
            "does not fix channels, height and width"
        )
    if c not in (1, 3):
        raise ValueError(f"{source}: no convspec metadata and the input has {c} channels (convspec handles 1 or 3)")
    width = output_width if isinstance(output_width, int) and output_width > 0 else None
    if width is None:
        raise ValueError(
            f"{source}: no convspec metadata and the output width is not fixed; cannot tell the number of classes"
        )
    task = "binary" if width == 1 else "multiclass"
    classes = tuple(str(i) for i in range(2 if width == 1 else width))
    warnings.warn(
        f"{source} has no convspec metadata: labels are numbered 0..{len(classes) - 1}, "
        f"images are stretched to {h}x{w} with {c} channel(s)",
        MetadataWarning,
        stacklevel=3,
    )
    return ModelInfo(classes=classes, task=task, channels=c, size=(h, w), has_metadata=False)


def expected_width(task: str, classes: tuple[str, ...] | list[str]) -> int:
    """The output width a model with this task and class list has: 1 (binary) or the class count."""
    return 1 if task == "binary" else len(classes)


def check_output_width(width: Any, task: str, classes, source: str) -> None:
    """Raise ValueError when a fixed output width disagrees with the class list (symbolic widths pass)."""
    if isinstance(width, int) and width > 0 and width != expected_width(task, classes):
        want = expected_width(task, classes)
        what = "a binary model has 1 output" if task == "binary" else f"{len(classes)} classes need {want} outputs"
        raise ValueError(
            f"{source}: the model's output has {width} values per image but its metadata lists {len(classes)} "
            f"classes ({what}); the model file and its metadata do not belong together"
        )


def finite_metrics(metrics: Any) -> dict[str, float]:
    """The finite numbers of a metrics mapping (results.json's, the metadata's); whatever a hand
    edit left that is not one (NaN, a string, a list) is skipped; not a mapping: ``{}``."""
    if not isinstance(metrics, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(text: str, key: str, source: str) -> Any:
    if len(text) > MAX_JSON:
        raise ValueError(f"{source}: malformed convspec metadata: convspec.{key} is {len(text):,} characters")
    try:
        return parse_json(text)
    except ValueError:
        raise ValueError(
            f"{source}: malformed convspec metadata: convspec.{key} is not JSON (got {_clip(text)!r})"
        ) from None


def _int(text: str, key: str, source: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(
            f"{source}: malformed convspec metadata: convspec.{key} must be an integer (got {_clip(str(text))!r})"
        ) from None


def _classes(text: str, source: str) -> tuple[str, ...]:
    value = _json(text, "classes", source)
    if not isinstance(value, list) or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in value):
        raise ValueError(
            f"{source}: malformed convspec metadata: convspec.classes must be a JSON list of names "
            f"(got {_clip(text)!r})"
        )
    classes = tuple(str(c) for c in value)
    if len(classes) < 2:
        raise ValueError(
            f"{source}: malformed convspec metadata: convspec.classes lists {len(classes)} class(es); at least 2"
        )
    problem = class_names_problem(classes)
    if problem:
        sep = " " if problem.startswith("repeats") else ": "
        raise ValueError(f"{source}: malformed convspec metadata: convspec.classes{sep}{problem}")
    return classes


def _size(text: str, source: str) -> tuple[int, int]:
    value = _json(text, "input_size", source)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not all(1 <= v <= MAX_SIDE for v in value)
    ):
        raise ValueError(
            f"{source}: malformed convspec metadata: convspec.input_size must be [height, width], "
            f"each 1..{MAX_SIDE} (got {_clip(text)!r})"
        )
    return int(value[0]), int(value[1])


def read_metadata(model: Any) -> ModelInfo:
    """Read a model's :class:`ModelInfo` from an ``.onnx`` path or an ORT ``InferenceSession``.

    Opening a path creates a CPU session (the metadata lives in the model file's header; ORT
    reads it without running anything). Use :class:`convspec.runtime.Predictor` to run it.

    Raises:
        ModelError: not a readable ONNX model, or no way to tell its input.
    """

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        session = open_session(model, ["CPUExecutionProvider"])
        name = str(model)
    else:
        session, name = model, "model"
    try:
        return session_info(session, name)
    except ValueError as e:
        raise ModelError(str(e)) from None


def session_info(session: Any, source: str = "model") -> ModelInfo:
    """:class:`ModelInfo` of an open ORT session (see :func:`from_props`)."""
    meta = session.get_modelmeta()
    inp = session.get_inputs()[0]
    outs = session.get_outputs()
    width = outs[0].shape[-1] if outs and outs[0].shape else None
    return from_props(dict(meta.custom_metadata_map), tuple(inp.shape), width, source=source)
