"""Cross-field rules: what one key's validity depends on another's. Each returns Issues with paths."""

from __future__ import annotations

import os

from .backbone_rules import backbone_issues, resolve_backbone_paths
from .classes import DIGITS, class_name_problem, classes_mismatch, has_image, static_class_names
from .errors import Issue


def check_rules(spec) -> list[Issue]:
    issues: list[Issue] = []
    rules = (_split, _source, _classes, _layer_count, _augment, _loss, _precision, _monitors, _threshold, _freeze)
    for rule in (*rules, backbone_issues):
        issues.extend(rule(spec))
    return issues


def _split(spec) -> list[Issue]:
    split = spec.data.split
    if split.from_ == "folders":
        if spec.data.source.type != "folder":
            return [
                Issue(
                    f"split from: folders needs a folder source (got {spec.data.source.type})",
                    ("data", "split", "from"),
                )
            ]
        return []
    issues = []
    total = split.train + split.val + split.test
    if abs(total - 1.0) > 1e-6:
        issues.append(
            Issue(
                f"train + val + test must sum to 1 (got {split.train} + {split.val} + {split.test} = {total:g})",
                ("data", "split"),
            )
        )
    if split.train <= 0:
        issues.append(Issue("train must be greater than 0", ("data", "split", "train")))
    return issues


#: Layers of a model once every ``repeat`` is unrolled (ResNet-152 has about 500 with its norms and
#: activations). Why: each ``times`` is capped, but nesting multiplies them (three repeats of
#: 1000 are 10**9 layers: gigabytes before any shape is known); and the ONNX export traces every
#: layer: 2,000 took 75 s on 2 cores, after a 2-s training.
MAX_LAYERS = 2_000


def _unrolled(layers) -> int:
    return sum(
        layer.times * _unrolled(layer.layers) if layer.type == "repeat"
        else 1 + _unrolled(layer.layers) if layer.type == "residual" else 1
        for layer in layers
    )  # fmt: skip


def _layer_count(spec) -> list[Issue]:
    total = 0
    for i, layer in enumerate(spec.model.layers):
        here = _unrolled([layer])
        total += here
        if total > MAX_LAYERS:
            what = f"repeats multiply: {here:,} in this one" if layer.type == "repeat" else "one per entry"
            return [
                Issue(
                    f"the model unrolls to more than {MAX_LAYERS:,} layers here ({what}); use fewer",
                    ("model", "layers", i),
                )
            ]
    return []


def _augment(spec) -> list[Issue]:
    """Pixel counts of augment steps within the image: a ``random_crop`` padding of 10**9 would pad
    every batch to gigabytes (an allocator's traceback mid-epoch)."""
    side = max(spec.input.size)
    issues = []
    for i, step in enumerate(spec.augment):
        key = {"random_crop": "padding", "cutout": "size"}.get(step.type)
        if key is not None and getattr(step, key) > side:
            issues.append(
                Issue(
                    f"at most the input's side, {side} (input.size {list(spec.input.size)}); got {getattr(step, key)}",
                    ("augment", i, key),
                )
            )
    return issues


def _source(spec) -> list[Issue]:
    src = spec.data.source
    if src.type == "builtin" and src.classes:
        unknown = [c for c in src.classes if c not in DIGITS]
        if unknown:
            return [Issue(f"digits has classes 0-9; unknown: {', '.join(unknown)}", ("data", "source", "classes"))]
    return []


def _empty_class_folders(spec, found: list[str], where: tuple) -> list[Issue]:
    """Class folders without an image file, which training refuses: named by validate too."""
    src = spec.data.source
    if src.type != "folder":
        return []
    roots = [src.path]
    if spec.data.split.from_ == "folders":  # each split folder holds the classes: each may lack images
        roots = [
            os.path.join(src.path, s) for s in ("train", "val", "test") if os.path.isdir(os.path.join(src.path, s))
        ]
    for root in roots:
        issue = _empty_in(root, found, where)
        if issue:
            return [issue]
    return []


def _empty_in(root: str, found: list[str], where: tuple) -> Issue | None:
    empty = [c for c in found if os.path.isdir(os.path.join(root, c)) and not has_image(os.path.join(root, c))]
    if not empty:
        return None
    # Why say so: "without images" sent the owner of an unreadable folder looking for files that are there
    empty = [c if os.access(os.path.join(root, c), os.R_OK | os.X_OK) else f"{c} (unreadable)" for c in empty]
    which = "folder" if len(empty) == 1 else "folders"
    shown = ", ".join(empty[:5]) + (f", ... ({len(empty)} in all)" if len(empty) > 5 else "")
    return Issue(
        f"class {which} without images in {root}: {shown} (remove it, or add its images; empty files do not count)",
        where,
    )


def _classes(spec) -> list[Issue]:
    issues = []
    n = spec.num_classes()
    found = (static_class_names(spec) or []) if spec.classes == "auto" and n is not None else []
    if spec.task == "binary" and n is not None and n != 2:
        where = ("classes",) if spec.classes != "auto" else ("task",)
        what = "binary" if where == ("task",) else "task: binary"  # Why: the key is already printed before it
        names = f" ({', '.join(found)})" if found and len(found) <= 10 else ""
        issues.append(Issue(f"{what} needs exactly 2 classes; this spec has {n}{names}", where))
    if spec.classes == "auto" and n is not None:  # what train would refuse at once, said by validate too
        where = ("data", "source", "path") if spec.data.source.type != "builtin" else ("data", "source", "classes")
        issues += _empty_class_folders(spec, found, where)
        if spec.task == "multiclass" and n < 2:
            src = spec.data.source
            what = {"folder": "class folder", "csv": "label"}.get(src.type, "class")
            inside = f" in {src.path}" if src.type != "builtin" else ""
            issues.append(
                Issue(f"only one {what} ({', '.join(found)}){inside}; multiclass needs at least 2 classes", where)
            )
        bad = next((problem for c in found if (problem := class_name_problem(c))), None)
        if bad and spec.data.source.type == "folder":  # a CSV's loader names the row, which is better
            issues.append(Issue(f"class folder in {spec.data.source.path}: {bad}", where))
    if isinstance(spec.classes, (list, int)):
        found = static_class_names(spec)
        if found is not None:
            if isinstance(spec.classes, list) and set(spec.classes) != set(found):
                detail = classes_mismatch(spec.classes, found)
                issues.append(Issue(f"must match the data's classes ({detail})", ("classes",)))
            elif isinstance(spec.classes, int) and spec.classes != len(found):
                issues.append(
                    Issue(
                        f"{spec.classes} classes given, but the data has {len(found)} ({', '.join(found[:10])})",
                        ("classes",),
                    )
                )
    return issues


def _loss(spec) -> list[Issue]:
    weights = spec.training.loss.class_weights
    n = spec.num_classes()
    if isinstance(weights, list) and n is not None and len(weights) != n:
        return [Issue(f"needs one weight per class ({n}); got {len(weights)}", ("training", "loss", "class_weights"))]
    return []


def _precision(spec) -> list[Issue]:
    """Half precision on a device the spec names as the CPU (on ``auto``, training decides where it runs)."""
    t = spec.training
    if t.device == "cpu" and t.precision in ("bf16", "fp16"):
        return [
            Issue(
                f"{t.precision} needs a CUDA device, and training.device is cpu; use fp32 or auto",
                ("training", "precision"),
            )
        ]
    return []


def _monitors(spec) -> list[Issue]:
    issues = []
    no_val = spec.data.split.from_ == "fractions" and spec.data.split.val == 0
    if no_val and spec.training.early_stopping is not None:
        issues.append(
            Issue(
                "early_stopping monitors the validation split, but data.split.val is 0", ("training", "early_stopping")
            )
        )
    if no_val and spec.tune is not None:
        issues.append(Issue("tuning is judged on the validation split, but data.split.val is 0", ("tune",)))
    return issues


def _threshold(spec) -> list[Issue]:
    t = spec.export.threshold
    if spec.task != "binary" and t != 0.5:
        return [
            Issue(
                "is for binary tasks only (a multiclass model labels by the most probable class)",
                ("export", "threshold"),
            )
        ]
    no_val = spec.data.split.from_ == "fractions" and spec.data.split.val == 0
    if no_val and not isinstance(t, (int, float)):
        return [Issue("is chosen on the validation split, but data.split.val is 0", ("export", "threshold"))]
    return []


def _freeze(spec) -> list[Issue]:
    t, layers = spec.training, spec.model.layers
    issues = []
    for i, item in enumerate(t.freeze):
        if item == "backbone" and not (layers and layers[0].type == "backbone"):
            first = layers[0].type if layers else "none"
            issues.append(Issue(f"backbone: layer 0 is not a backbone (got {first})", ("training", "freeze", i)))
        elif item != "backbone" and item >= len(layers):
            issues.append(
                Issue(f"must index model.layers, 0 to {len(layers) - 1} (got {item})", ("training", "freeze", i))
            )
    if t.unfreeze_epoch is not None and not t.freeze:
        issues.append(Issue("has no effect without training.freeze", ("training", "unfreeze_epoch")))
    return issues


def frozen_layers(spec) -> list[int]:
    """``training.freeze`` as sorted layer indices (``backbone`` is layer 0)."""
    return sorted({0 if item == "backbone" else item for item in spec.training.freeze})


def resolve_paths(spec, base_dir: str) -> None:
    """Make the source's relative paths relative to the spec file's folder."""
    src = spec.data.source
    if src.type in ("folder", "csv"):
        src.path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(src.path)))
    if src.type == "csv" and src.root is not None:
        src.root = os.path.normpath(os.path.join(base_dir, os.path.expanduser(src.root)))
    resolve_backbone_paths(spec, base_dir)
    if spec.training.init is not None:
        spec.training.init = os.path.normpath(os.path.join(base_dir, os.path.expanduser(spec.training.init)))
