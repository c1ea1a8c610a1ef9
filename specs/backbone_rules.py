"""Rules and warnings about the ``backbone`` layer and the statistics it expects (torch-free)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from .backbones import check_name, lookup, normalize_values
from .errors import Issue, Path
from .layers import Backbone, Repeat, Residual
from .pipeline import Normalize

FIRST = ("model", "layers", 0)


def iter_backbones(layers, path: Path = ("model", "layers")) -> Iterator[tuple[Backbone, Path]]:
    """Every backbone in a layer list, nested ones included, with its path."""
    for i, layer in enumerate(layers):
        if isinstance(layer, Backbone):
            yield layer, path + (i,)
        elif isinstance(layer, (Repeat, Residual)):
            yield from iter_backbones(layer.layers, path + (i, "layers"))


def first_backbone(spec) -> Backbone | None:
    """The spec's backbone layer (``model.layers[0]``), or None."""
    layers = spec.model.layers
    return layers[0] if layers and isinstance(layers[0], Backbone) else None


def backbone_issues(spec) -> list[Issue]:
    """A backbone only first, a name timm knows, ``trainable: N`` within its stages, ``mean: backbone`` with one."""
    issues = []
    for layer, path in iter_backbones(spec.model.layers):
        if path != FIRST:
            issues.append(
                Issue(
                    "a backbone must be the first layer of model.layers (its stem takes the preprocessed image)",
                    path,
                )
            )
        error, _ = check_name(layer.name)
        if error:
            issues.append(Issue(error, path + ("name",)))
        info = lookup(layer.name)
        trainable = layer.trainable
        if info is not None and not isinstance(trainable, bool) and trainable > info.stages:
            issues.append(
                Issue(
                    f"{layer.name} has {info.stages} stages; trainable must be true, false or 1 to {info.stages} "
                    f"(got {trainable})",
                    path + ("trainable",),
                )
            )
        if info is not None and layer.output == "features" and info.feature_channels is None:
            issues.append(Issue(f"{layer.name} has no image feature map; use output: pooled", path + ("output",)))
    if first_backbone(spec) is None:
        for i, step in enumerate(spec.preprocess):
            if isinstance(step, Normalize) and step.mean == "backbone":
                issues.append(
                    Issue(
                        "mean: backbone takes the statistics of the backbone layer, and model.layers[0] is not one",
                        ("preprocess", i, "mean"),
                    )
                )
    return issues


def backbone_warnings(spec) -> list[Issue]:
    """What does not stop a spec but likely hurts it: no matching normalize, no weights file, unchecked shapes."""
    layer = first_backbone(spec)
    if layer is None:
        return []
    warnings = []
    _, name_warning = check_name(layer.name)
    if name_warning:
        warnings.append(Issue(name_warning, FIRST + ("name",)))
    if lookup(layer.name) is None:
        warnings.append(
            Issue(
                f"{layer.name!r} is not in convspec's backbone table: the shapes of the layers after it are not "
                "checked without torch; `convspec summary` measures them with timm",
                FIRST + ("name",),
            )
        )
    path = layer.weights_file
    if path is not None and not os.path.isfile(path):
        warnings.append(Issue(f"no such file: {path} (training needs it)", FIRST + ("weights",)))
    if layer.weights != "none" and not _normalize_matches(spec, layer):
        info = lookup(layer.name)
        stats = (
            f" (mean {list(info.mean)}, std {list(info.std)})" if info is not None and info.mean and info.std else ""
        )
        warnings.append(
            Issue(
                f"weights: {layer.weights} were trained on images normalized with the backbone's statistics{stats}, "
                "and preprocess has no normalize step with them; add {type: normalize, mean: backbone, std: backbone}",
                FIRST + ("weights",),
            )
        )
    return warnings


def _normalize_matches(spec, layer: Backbone) -> bool:
    """Whether some normalize step uses the backbone's statistics (named, or the same values)."""
    info = lookup(layer.name)
    channels = spec.input.channels
    for step in spec.preprocess:
        if getattr(step, "type", None) == "grayscale":
            channels = 1
        if not isinstance(step, Normalize) or step.mean == "auto":
            continue
        if step.mean == "backbone":
            return True
        want = normalize_values("backbone", layer.name, channels)
        if want is None:  # statistics unknown without timm: any named or explicit normalize passes
            return True
        have = normalize_values("imagenet", None, channels) if step.mean == "imagenet" else (step.mean, step.std)
        if info is not None and _close(have[0], want[0]) and _close(have[1], want[1]):
            return True
    return False


def _close(a, b, tol: float = 2e-3) -> bool:
    return a is not None and len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def resolve_backbone_paths(spec, base_dir: str) -> None:
    """A backbone's relative weights path is relative to the spec file's folder."""
    for layer, _ in iter_backbones(spec.model.layers):
        if layer.weights_file is not None:
            layer.weights = os.path.normpath(os.path.join(base_dir, os.path.expanduser(layer.weights)))
