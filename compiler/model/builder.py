"""spec -> ``ConvspecModel``: preprocess + body (the spec's layers) + head.

The model takes the uint8 images the data pipeline and the runtime both produce
(``(N, C, H, W)``, ``input.size``, values 0-255; float pixels in [0, 255] work too) and
returns logits in training mode, probabilities in eval mode, so the exported graph goes
from pixels to probabilities with nothing to re-implement at deployment.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
from torch import nn

from convspec.specs import load_spec
from convspec.specs.classes import class_names_problem, static_class_names
from convspec.specs.errors import Issue, SpecError
from convspec.specs.loader import revalidate

from .layers import BUILDERS, build_layers, register  # noqa: F401  (re-exported registry)
from .preprocess import Preprocess, build_preprocess


class ConvspecModel(nn.Module):
    """A compiled spec.

    Attributes:
        preprocess: :class:`~convspec.compiler.preprocess.Preprocess` (scale, denoise, crop, normalize).
        body: ``nn.Sequential``, one child per entry of ``model.layers``.
        head: flatten (when needed) + ``Linear(units)``; ``nn.Identity`` when ``model.head: false``.
        task: ``"binary"`` or ``"multiclass"``.
        num_classes: number of classes (2 for binary); None only with ``model.head: false``
            and a class count that is unknown.
        class_names: class names in output order, or None where unknown.
        input_shape: ``(C, H, W)`` the model takes.
        has_head: whether the automatic head is present.

    With ``model.head: false`` the spec's own last layer gives the logits (validation checks its
    width, 1 or one per class, and refuses a softmax/sigmoid of its own); the sigmoid/softmax is
    added here as with the automatic head, so the model still returns probabilities.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        body: nn.Sequential,
        head: nn.Module,
        *,
        task: str,
        num_classes: int | None,
        class_names: list[str] | None,
        input_shape: tuple[int, int, int],
        has_head: bool,
    ):
        super().__init__()
        self.preprocess = preprocess
        self.body = body
        self.head = head
        self.task = task
        self.num_classes = num_classes
        self.class_names = class_names
        self.input_shape = tuple(input_shape)
        self.has_head = has_head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, units)`` of pixels ``(N, C, H, W)`` (uint8, or float in [0, 255])."""
        return self.head(self.body(self.preprocess(x)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid (binary, ``(N, 1)``) or softmax over classes (multiclass, ``(N, K)``)."""
        return torch.sigmoid(logits) if self.task == "binary" else torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in training mode, probabilities in eval mode (what is exported)."""
        z = self.logits(x)
        return z if self.training else self.probabilities(z)

    def set_normalization(self, mean, std) -> None:
        """Set the statistics of every ``normalize: {mean: auto}`` step (one value per channel).

        Raises:
            ValueError: the spec has no ``mean: auto`` step, or the lengths are wrong.
        """
        autos = self.preprocess.auto_normalize
        if not autos:
            raise ValueError("this model has no normalize step with mean: auto")
        for step in autos:
            step.set_stats(mean, std)

    @property
    def needs_normalization(self) -> bool:
        """Whether the spec has ``mean: auto`` steps (their stats come from the training split)."""
        return bool(self.preprocess.auto_normalize)


def _resolve_classes(
    spec, num_classes: int | None, class_names: list[str] | None
) -> tuple[int | None, list[str] | None]:
    where, file = ("classes",), spec.source_file
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if problem := class_names_problem(class_names):
            raise SpecError(Issue(f"class_names: {problem}", where, file))
        if num_classes is None:
            num_classes = len(class_names)
        elif len(class_names) != num_classes:
            raise SpecError(Issue(f"got {len(class_names)} class names for num_classes={num_classes}", where, file))
    declared = spec.num_classes()
    if num_classes is None:
        num_classes = declared
    elif declared is not None and num_classes != declared and spec.classes != "auto":
        raise SpecError(
            Issue(f"the spec declares {declared} classes; the model was asked for {num_classes}", where, file)
        )
    if spec.task == "binary":
        if num_classes is not None and num_classes != 2:
            raise SpecError(Issue(f"binary needs exactly 2 classes; got {num_classes}", ("task",), file))
        num_classes = 2
    elif num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)):
        raise SpecError(Issue(f"num_classes: expected an integer (got {num_classes!r})", ("task",), file))
    elif num_classes is not None and num_classes < 2:
        raise SpecError(Issue(f"multiclass needs at least 2 classes; got num_classes={num_classes!r}", ("task",), file))
    if class_names is None:
        if isinstance(spec.classes, list):
            class_names = list(spec.classes)
        else:
            names = static_class_names(spec)
            if names is not None and len(names) == num_classes:
                class_names = names
    return num_classes, class_names


def build_model(spec, num_classes: int | None = None, class_names: list[str] | None = None) -> ConvspecModel:
    """Compile a validated spec into a :class:`ConvspecModel`: fresh weights, in eval mode, so that
    it maps uint8 images to probabilities as SPEC.md says (``.train()`` gives logits; the loop calls it).

    Args:
        spec: a :class:`convspec.specs.Spec` (from ``load_spec``), or a spec file's path.
        num_classes: the class count, where the spec cannot know it (``classes: auto`` with
            data that is not readable here); default ``spec.num_classes()``.
        class_names: names in output order; default the spec's list or the data's names.

    Raises:
        SpecError: the class count is unknown (and the head needs it), or contradicts the
            spec; a layer's shapes do not work out.
    """
    if isinstance(spec, (str, os.PathLike)):  # as train() and export_onnx() take a path
        spec = load_spec(spec)
    else:  # Why: a Spec changed in Python (filters=0, epochs="3") is not checked by pydantic
        spec = revalidate(spec)
    return assemble_model(spec, num_classes, class_names)


def assemble_model(spec, num_classes: int | None = None, class_names: list[str] | None = None) -> ConvspecModel:
    """:func:`build_model` of a spec that is known valid: the one train and export built from a file."""
    num_classes, class_names = _resolve_classes(spec, num_classes, class_names)
    preprocess = build_preprocess(spec)
    body, shape = build_layers(spec.model.layers, preprocess.out_shape)
    head: nn.Module = nn.Identity()
    if spec.model.head:
        units = 1 if spec.task == "binary" else num_classes
        if units is None:
            raise SpecError(
                Issue(
                    "the number of classes is unknown (classes: auto and the data source is not readable here); pass "
                    "num_classes or list the classes",
                    ("classes",),
                    spec.source_file,
                )
            )
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if len(shape) != 1:
            parts["flatten"] = nn.Flatten()
        parts["linear"] = nn.Linear(math.prod(shape), units)
        head = nn.Sequential(parts)
    return ConvspecModel(
        preprocess,
        body,
        head,
        task=spec.task,
        num_classes=num_classes,
        class_names=class_names,
        input_shape=(spec.input.channels, *spec.input.size),
        has_head=spec.model.head,
    ).eval()
