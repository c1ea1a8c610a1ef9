"""Class names of a data source, read without decoding any image (for validate and summary)."""

from __future__ import annotations

import csv
import os

DIGITS = [str(i) for i in range(10)]


def folder_classes(root: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root`` (ImageFolder layout)."""
    return sort_names(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def static_class_names(spec) -> list[str] | None:
    """The data's class names, sorted; None when the source cannot be read here."""
    src = spec.data.source
    try:
        if src.type == "builtin":
            return sort_names(src.classes) if src.classes else list(DIGITS)
        if src.type == "folder":
            root = src.path
            if spec.data.split.from_ == "folders":
                root = os.path.join(root, "train")
            return folder_classes(root) or None
        if src.type == "csv":
            with open(src.path, newline="", encoding="utf-8") as f:
                labels = {row.get("label") for row in csv.DictReader(f)}
            labels.discard(None)
            return sort_names(labels) or None
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def sort_names(names) -> list[str]:
    """The one class order of convspec: numbers numerically ('2' before '10'), then names."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
