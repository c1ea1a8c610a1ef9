"""``convspec predict`` and ``evaluate``: the deployment commands.

They run exported models through :mod:`convspec.runtime` and never import torch (they start in
a fraction of a second; an import contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from convspec.specs import ConvspecError
from convspec.specs.errors import one_line

from ._common import err, out, user_errors
from ._group import at_least


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


def _predictor(model: Path):
    """A Predictor for MODEL (an .onnx file, or a run folder holding model.onnx); warnings to stderr."""
    from convspec.runtime import Predictor

    path = model
    if model.is_dir() and (model / "model.onnx").is_file():
        path = model / "model.onnx"
    elif model.is_dir():
        raise ConvspecError(
            f"{model}: is a folder without model.onnx; give an .onnx file (or run: convspec export {model})"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Why one ORT thread: predict and evaluate run one worker a core, each decoding and scoring
        # its own batch (Predictor.scored_chunks); more ORT threads would only fight them for the cores
        predictor = Predictor(path, intra_op_threads=1)
    for w in caught:
        err.print(f"warning: {w.message}", markup=False)
    return predictor


def _collect(inputs: list[Path]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files of the inputs (folders recursively, sorted), and inputs that give none."""
    from convspec.runtime import IMAGE_EXTENSIONS, list_images

    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        name = os.fspath(item)
        if item.is_dir():
            found = list_images(name, log=lambda m: err.print(m, markup=False))
            if not found:
                problems.append(
                    (
                        name,
                        "no images in this folder (looked for "
                        + " ".join(sorted(IMAGE_EXTENSIONS))
                        + ", in sub-folders too)",
                    )
                )
            files.extend(found)
        elif not item.exists() and not item.is_symlink():  # a broken or looping link: the decoder names it
            if name == "-":
                problems.append((name, "file not found (images are read from files, not from standard input)"))
            elif re.match(r"^[a-z][a-z0-9+.-]*:/", name, re.IGNORECASE):  # Path made "http://x" into "http:/x"
                problems.append((name, "file not found (URLs are not read: download the image first)"))
            else:
                problems.append((name, "file not found"))
        else:
            files.append(name)  # whatever its name, the decoder decides (and reports)
    return files, problems


@user_errors
def predict(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An exported .onnx model (or a run folder).")],
    inputs: Annotated[
        list[Path], typer.Argument(metavar="IMAGE_OR_FOLDER...", help="Images, or folders searched recursively.")
    ],
    top_k: Annotated[
        int, typer.Option("--top-k", callback=at_least(1), help="Classes to show per image (at least 1).")
    ] = 1,
    fmt: Annotated[Format, typer.Option("--format", help="table, json or csv.")] = Format.table,
    batch_size: Annotated[
        int, typer.Option("--batch-size", callback=at_least(1), help="Images per inference run (at least 1).")
    ] = 64,
) -> None:
    """Classify images with an exported model. Unreadable files are reported; exit 1 if any."""
    predictor = _predictor(model)
    files, problems = _collect(inputs)
    failures: list[tuple[str, str]] = list(problems)
    preds = (
        predictor.predict(files, top_k=top_k, batch_size=batch_size, on_error="skip", failures=failures)
        if files
        else []
    )
    k = min(top_k, len(predictor.classes))
    if fmt == Format.json:
        sys.stdout.write(json.dumps([p.to_dict() for p in preds], indent=1) + "\n")
    elif fmt == Format.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(
            ["path", "label", "probability"] + [c for i in range(2, k + 1) for c in (f"label_{i}", f"probability_{i}")]
        )
        for p in preds:
            w.writerow([p.source] + [v for lab, prob in p.top for v in (lab, f"{prob:.6f}")])
    elif preds:
        # Why escape: file and class names are user data; rich would read "[/]" or "[bold]" in them as markup
        table = Table(
            title=escape(f"{len(preds)} image{'s' if len(preds) != 1 else ''}: {model}"), title_justify="left"
        )
        table.add_column("image", overflow="fold")
        table.add_column("label")
        table.add_column("probability", justify="right")
        if k > 1:
            table.add_column(f"next {k - 1}")
        for p in preds:
            row = [escape(one_line(p.source)), escape(p.label), f"{p.probability:.4f}"]
            if k > 1:
                row.append(escape(", ".join(f"{lab} {prob:.4f}" for lab, prob in p.top[1:])))
            table.add_row(*row)
        out.print(table)
    for path, reason in failures:  # one line each, whatever the file's name holds
        err.print(one_line(f"{path}: {reason}"), markup=False)
    if failures:
        err.print(
            f"{len(failures)} input{'s' if len(failures) != 1 else ''} could not be predicted"
            + (f"; {len(preds)} predicted" if preds else ""),
            markup=False,
        )
        raise typer.Exit(1)


def _run_test_split(run: Path, predictor):
    """Score ``predictor`` on a run folder's test split (split.json + spec.yaml), without torch."""
    from convspec.runtime.evaluate import evaluate_arrays, evaluate_files, match_classes
    from convspec.specs import load_spec

    from ..data.loading import load_dataset
    from ..data.split import read_split

    doc = read_split(run / "split.json")
    test = doc["splits"]["test"]
    if not test["files"]:
        raise ConvspecError(
            f"{run}: the run has no test split (data.split.test is 0); give a folder or CSV of labelled images"
        )
    index = match_classes(sorted(set(test["labels"])), predictor.classes, f"{run}/split.json")
    if doc.get("root") is not None:
        root = doc["root"]
        paths = [f if os.path.isabs(f) else os.path.join(root, *f.split("/")) for f in test["files"]]
        gone = [f for f, p in zip(test["files"], paths, strict=True) if not os.path.isfile(p)]
        if gone:  # Why refused: scores over fewer images than the run's read as the run's own, with exit 0
            from convspec.runtime.datasets import DataError, short_list

            raise DataError(
                f"{run / 'split.json'}: {len(gone)} of the run's {len(paths)} test images are gone from {root} "
                f"(or no longer files): {short_list(gone)}; restore them, or evaluate a folder or CSV of the "
                "images there are"
            )
        import numpy as np

        labels = np.array([index[n] for n in test["labels"]], np.int64)
        return evaluate_files(predictor, paths, labels)
    spec_file = run / "spec.yaml"
    if not os.path.lexists(spec_file):
        raise ConvspecError(f"{run}: no spec.yaml; cannot rebuild the run's test images")
    spec = load_spec(spec_file)  # the one reader: its size limit, UTF-8 check and FILE:LINE:COL
    shape = (spec.input.channels, *spec.input.size)
    if tuple(predictor.input_shape) != shape:
        raise ConvspecError(
            f"{spec_file}: input {list(shape)} (channels, height, width) differs from {predictor.path}'s "
            f"{list(predictor.input_shape)}: the run's spec and the model are not the same run's"
        )
    data = load_dataset(spec, split_file=run / "split.json", log=lambda _m: None)
    labels = data.labels[data.splits["test"]]
    model_index = [index.get(name, -1) for name in data.class_names]
    return evaluate_arrays(predictor, data.rows("test"), [model_index[i] for i in labels])


def _is_run_folder(folder: Path) -> bool:
    """Whether DATA is a run folder (its test split is scored); a damaged one is refused by name,
    never scanned as an ImageFolder of its plots."""
    from convspec.runtime.compare import not_a_fold_hint

    from ..run.files import MARKER

    hint = not_a_fold_hint(folder)
    if hint and not os.path.lexists(folder / "split.json"):
        raise ConvspecError(f"{folder}: not one run{hint}")
    if os.path.lexists(folder / "split.json"):
        return True
    if os.path.lexists(folder / MARKER):
        raise ConvspecError(
            f"{folder}: a run folder without split.json, so its test split is unknown; restore split.json, "
            "or give a folder or CSV of labelled images"
        )
    return False


@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An exported .onnx model (or a run folder).")],
    data: Annotated[
        Path,
        typer.Argument(metavar="DATA", help="ImageFolder folder, CSV (path,label), or a run folder (its test split)."),
    ],
    batch_size: Annotated[
        int, typer.Option("--batch-size", callback=at_least(1), help="Images per inference run (at least 1).")
    ] = 64,
    fmt: Annotated[EvalFormat, typer.Option("--format", help="table or json.")] = EvalFormat.table,
) -> None:
    """Score a model on labelled images: accuracy, per-class precision/recall/F1, confusion matrix."""
    from convspec.runtime import evaluate as run_evaluate

    predictor = _predictor(model)
    if data.is_dir() and _is_run_folder(data):
        result = _run_test_split(data, predictor)
        what = f"{data} (test split)"
    else:
        result = run_evaluate(predictor, data, batch_size=batch_size, log=lambda m: err.print(m, markup=False))
        what = str(data)
    for path, reason in result.failures:
        err.print(one_line(f"{path}: {reason} (skipped)"), markup=False)
    if fmt == EvalFormat.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
        return
    avg = f"{result.classes[1]} (positive class)" if result.task == "binary" else "macro"
    out.print(
        f"{what}: {result.images} images, accuracy {result.accuracy * 100:.2f} %, {avg} precision "
        f"{result.precision:.4f}, recall {result.recall:.4f}, F1 {result.f1:.4f}, AUC {_score(result.auc)}, "
        f"ECE {_score(result.ece)}" + (f", threshold {result.threshold:g}" if result.threshold is not None else ""),
        markup=False,
    )
    table = Table(title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in result.per_class.items():
        if c["support"] or result.confusion[:, result.classes.index(name)].any():
            table.add_row(
                escape(name), f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"])
            )
    out.print(table)
    if len(result.classes) <= 20:
        cm = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
        cm.add_column("")
        for name in result.classes:
            cm.add_column(escape(name), justify="right")
        for name, row in zip(result.classes, result.confusion, strict=True):
            cm.add_row(escape(name), *[str(v) for v in row])
        out.print(cm)
    if result.failures:
        err.print(
            f"{len(result.failures)} unreadable image{'s' if len(result.failures) != 1 else ''} skipped", markup=False
        )


def _score(v: float) -> str:
    """A metric in the table: ``n/a`` where undefined (the AUC of a split holding one class), as the JSON's null."""
    return "n/a" if v is None or math.isnan(v) else f"{v:.4f}"
