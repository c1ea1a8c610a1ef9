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
import warnings
from dataclasses import dataclass, field
from typing import Any

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
    "layout",
    "output",
    "spec",
    "version",
    "test_metrics",
    "threshold",
)


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
        ValueError: metadata present but malformed, or a graph that tells neither
            channels nor size (the caller turns it into a ModelError).
    """
    ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
    if "classes" in ours and "channels" in ours and "input_size" in ours:
        try:
            classes = tuple(str(c) for c in json.loads(ours["classes"]))
            size = tuple(int(v) for v in json.loads(ours["input_size"]))
            channels = int(ours["channels"])
            metrics = json.loads(ours["test_metrics"]) if ours.get("test_metrics") else {}
            threshold = float(ours["threshold"]) if ours.get("threshold") else None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: malformed convspec metadata ({e})") from None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{source}: malformed convspec metadata (threshold {threshold} is not in [0, 1])")
        if len(size) != 2 or channels not in (1, 3) or len(classes) < 2:
            raise ValueError(
                f"{source}: malformed convspec metadata (channels {channels}, "
                f"input_size {list(size)}, {len(classes)} classes)"
            )
        task = ours.get("task") or ("binary" if output_width == 1 else "multiclass")
        return ModelInfo(
            classes=classes,
            task=task,
            channels=channels,
            size=size,  # type: ignore[arg-type]
            resize=ours.get("resize", "stretch"),
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
