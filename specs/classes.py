"""Class names of a data source, read without decoding any image (for validate and summary)."""

from __future__ import annotations

import csv
import io
import os
import unicodedata

from .errors import Issue, SpecError, control_character
from .readfile import FileReadError, read_text

DIGITS = [str(i) for i in range(10)]

# The range of ``input.bits_stored``; the loader and the model metadata check the same bounds.
# Why here, beside the class-name rule: the runtime reads both without importing pydantic.
BITS_STORED = (8, 16)


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name, or None: the one rule for the spec, data and models.

    Why printable: class names are printed in terminal tables, plots and report.md, where a
    newline breaks the row and an escape sequence rewrites the user's terminal.
    """
    code = control_character(name)
    if code:
        return f"class name {name!r} holds a control character ({code}); class names must be printable"
    if any("\ud800" <= c <= "\udfff" for c in name):  # a folder name that is not UTF-8, as Python decodes it
        return f"class name {name!r} is not UTF-8 text; rename the class folder (model files store names as UTF-8)"
    return None


def class_names_problem(names) -> str | None:
    """Why a list of class names cannot be a model's (a name :func:`class_name_problem` refuses,
    or one repeated), or None: checkpoints and ONNX metadata both hold such a list."""
    bad = next((problem for n in names if (problem := class_name_problem(n))), None)
    if bad:
        return bad
    if len(set(names)) != len(names):
        return f"repeats {', '.join(sorted({n for n in names if names.count(n) > 1})[:5])}"
    return None


# ---------------------------------------------------------------- convspec's own outputs

#: The file training writes into every run folder (and tune into its study folder): a folder
#: holding it is convspec's output, never data.
RUN_MARKER = ".convspec-run"
# Why a file pattern besides the marker: run folders written before the marker existed.
_RUN_FILES = frozenset({"split.json", "metrics.jsonl", "last.pt", "best.pt", "results.json", "report.md"})
_TUNE_FILES = frozenset({"study.db", "tune.json", "trials.csv"})
#: The images convspec writes into run and tune folders (plots), by name.
OUTPUT_IMAGES = frozenset(
    {
        "curves.png",
        "confusion.png",
        "errors.png",
        "roc.png",
        "pr.png",
        "calibration.png",
        "compare.png",
        "history.png",
        "importance.png",
    }
)


def _names(path: str) -> set[str]:
    try:
        return {e.name for e in os.scandir(path)}
    except OSError:
        return set()


def is_run_folder(path: str) -> bool:
    """Whether ``path`` is a folder convspec wrote: a run folder, a tune folder, or ``runs/``.

    The rule: the folder holds :data:`RUN_MARKER`; or ``spec.yaml`` (or ``best.yaml``) with
    one of split.json, metrics.jsonl, last.pt, best.pt, results.json, report.md; or
    study.db / tune.json / trials.csv with ``best.yaml`` or ``trials/``; or it holds at least
    one such folder and, besides them, only sub-folders of that kind and no images (the
    ``runs/`` folder that holds run folders).
    """
    names = _names(path)
    if not names:
        return False
    if RUN_MARKER in names:
        return True
    if "spec.yaml" in names and names & _RUN_FILES:
        return True
    if names & _TUNE_FILES and ({"best.yaml", "trials"} & names):
        return True
    subdirs = [n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n))]
    if not subdirs or any(os.path.splitext(n)[1].lower() in _IMAGE_EXT for n in names):
        return False
    # Why one level only: ``runs/NAME/`` is the layout; deeper searches would cost a walk per folder.
    return all(_is_run_leaf(os.path.join(path, n)) for n in subdirs)


def _is_run_leaf(path: str) -> bool:
    names = _names(path)
    return (
        RUN_MARKER in names
        or ("spec.yaml" in names and bool(names & _RUN_FILES))
        or bool(names & _TUNE_FILES and ({"best.yaml", "trials"} & names))
    )


_IMAGE_EXT = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def folder_classes(root: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root`` (ImageFolder layout).

    Folders convspec wrote (:func:`is_run_folder`: run folders, ``runs/``, tune folders)
    are not classes.
    """
    return sort_names(
        e.name
        for e in os.scandir(root)
        if e.is_dir() and not e.name.startswith(".") and not is_run_folder(os.path.join(root, e.name))
    )


def has_image(folder: str) -> bool:
    """Whether ``folder`` (searched recursively, as training lists it) holds a non-empty file with an
    image extension. Stops at the first one: a full class folder costs a few directory entries."""
    pending, seen = [folder], set()
    try:
        while pending:
            path = pending.pop()
            st = os.stat(path)  # links are followed, as training does; a loop is read once
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(path) as entries:
                for e in entries:
                    if e.name.startswith("."):
                        continue
                    if os.path.splitext(e.name)[1].lower() in _IMAGE_EXT and e.is_file() and _not_empty(e):
                        return True
                    if e.is_dir():
                        pending.append(e.path)
    except OSError:
        return False  # unreadable (no permission): training lists no images there either
    return False


def _not_empty(entry: os.DirEntry) -> bool:
    """Why: a class of 0-byte files passed validate, and every one of them then failed to decode."""
    try:
        return entry.stat().st_size > 0
    except OSError:
        return False


def static_class_names(spec) -> list[str] | None:
    """The data's class names, sorted; None when the source cannot be read here.

    Raises:
        SpecError: (at ``data.source.path``) a CSV that is a FIFO, a device, a folder, too
            large or not UTF-8 text: reading it would hang or never end.
    """
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
            try:
                return _csv_class_names(src.path) or None
            except FileReadError as e:
                if e.reason == "file not found":
                    return None  # Why: validate may run before the data exists; train reports it
                raise SpecError(Issue(str(e), ("data", "source", "path"))) from None
    except (OSError, csv.Error):
        return None
    return None


# Why a cache: validate and train ask for a CSV's class names three or four times (rules, summary,
# the builder); a 1,000,000-row CSV took 0.5 s each. Keyed by what the file is now: an edit misses.
_csv_names_seen: dict[tuple, list[str]] = {}


def _csv_class_names(path: str) -> list[str]:
    """The sorted labels of a CSV source's ``label`` column (empty ones left out)."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except (OSError, ValueError):
        key = None  # read_text says why
    if key in _csv_names_seen:
        return list(_csv_names_seen[key])
    text = read_text(path, "csv", encoding="utf-8-sig")
    labels = {(row.get("label") or "").strip() for row in csv.DictReader(io.StringIO(text, newline=""))}
    labels.discard("")
    names = sort_names(labels)
    if key is not None:
        _csv_names_seen.clear()  # the one CSV of the spec at hand
        _csv_names_seen[key] = names
    return list(names)


def classes_mismatch(listed, found, show: int = 10) -> str:
    """Why ``classes:`` (``listed``) and the data's class names (``found``) differ, for a message:
    ``in the data but not listed: ...; listed but not in the data: ...``, with the two causes that
    look like no difference at all named: a skipped ``.hidden`` folder, and the same name in two
    Unicode forms (macOS writes folder names decomposed: ``é`` as ``e`` + U+0301).
    """

    def names(items: list[str]) -> str:
        more = f", ... and {len(items) - show} more" if len(items) > show else ""
        return ", ".join(items[:show]) + more

    missing, extra = sort_names(set(found) - set(listed)), sort_names(set(listed) - set(found))
    parts = [f"in the data but not listed: {names(missing)}" if missing else ""]
    parts.append(f"listed but not in the data: {names(extra)}" if extra else "")
    hidden = [n for n in extra if n.startswith(".")]
    if hidden:
        parts.append(f"folders whose names start with '.' are skipped, as hidden: {names(hidden)}")
    forms = other_unicode_form(extra, missing)
    if forms:
        parts.append(
            f"{names(forms)}: the same letters in another Unicode form (NFC against NFD, as macOS "
            "writes folder names); rename the folder or write the name as the data does"
        )
    return "; ".join(p for p in parts if p)


def other_unicode_form(names, others) -> list[str]:
    """The ``names`` that are one of ``others`` written in another Unicode form (NFC against NFD,
    as macOS writes folder names: ``é`` as ``e`` + U+0301): different strings that print alike."""
    nfc = {unicodedata.normalize("NFC", o) for o in others}
    return [n for n in names if unicodedata.normalize("NFC", n) in nfc]


def sort_names(names) -> list[str]:
    """The one class order of convspec: numbers numerically ('2' before '10'), then names.

    Numbers are names of decimal digits (``isdecimal``: '²' is a digit but no number); names equal
    as numbers ('3', '03') go by their text, so the order never depends on the input's order.
    """
    return sorted(names, key=lambda n: (0, int(n), n) if n.isdecimal() else (1, 0, n))
