"""Listing labelled images without decoding them: ImageFolder trees, CSV files, train/val/test folders.

Torch-free. A listing is ``(samples, class_names)``: ``samples`` is ``[(path, label), ...]``
with ``label`` an index into ``class_names``, and ``class_names`` is in convspec's one class
order (:func:`convspec.specs.classes.sort_names`: numbers numerically, then names). Files are
found by extension (:data:`~convspec.runtime.images.IMAGE_EXTENSIONS`); whether they decode
is checked when they are loaded, and a file that does not is reported by path then.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import unicodedata
import warnings
from collections.abc import Callable

from convspec.specs.classes import (
    OUTPUT_IMAGES,
    class_name_problem,
    folder_classes,
    is_run_folder,
    other_unicode_form,
    sort_names,
)
from convspec.specs.errors import ConvspecError, one_line
from convspec.specs.readfile import FileReadError, check_regular, describe_mode, read_text

from .images import IMAGE_EXTENSIONS, is_image_file

__all__ = ["DataError", "SPLIT_FOLDERS", "list_csv", "list_folder", "list_images", "list_split_folders"]

Samples = list[tuple[str, int]]
SPLIT_FOLDERS = ("train", "val", "test")
_SHOW = 10  # how many names an error lists before "... and N more"


class DataError(ConvspecError):
    """The data a spec points at cannot be used: missing folder, bad CSV, classes that do not match."""


def short_list(items, show: int = _SHOW, *, total: int | None = None) -> str:
    """``a, b, c, ... and 12 more``: long lists in messages stay one line. ``total``: how many
    there are when ``items`` holds only the first ones (each costly to name)."""
    items = list(items)
    total = len(items) if total is None else total
    text = ", ".join(one_line(str(i)) for i in items[:show])
    return text + (f", ... and {total - show} more" if total > show else "")


def _warn(log: Callable[[str], None] | None, message: str) -> None:
    if log is None:
        warnings.warn(message, stacklevel=3)
    else:
        log(f"warning: {message}")


def list_images(folder: str, *, log: Callable[[str], None] | None = None) -> list[str]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped.

    Symbolic links are followed; a link back to a folder above it (a loop) is skipped with
    a warning. Other files (by extension: ``notes.txt``, a PNG named ``x.dat``) are skipped with
    one warning that names them. Folders convspec wrote (run folders, ``runs/``, tune folders: see
    :func:`convspec.specs.classes.is_run_folder`) are skipped with a warning, and so are the
    plots (``curves.png``...) of a run folder given as ``folder`` itself. A broken link, a FIFO
    or a device with an image extension is kept, so it is reported as a bad image by path (by
    :func:`convspec.specs.readfile.check_regular`, before anything opens it) rather than vanishing.

    Args:
        folder: where to look.
        log: receives warnings (``warning: ...``); None uses :func:`warnings.warn`.

    Raises:
        DataError: ``folder`` is not a folder.
    """
    return [path for path, _ in _walk_images(folder, log)]


def _walk_images(folder: str, log: Callable[[str], None] | None) -> list[tuple[str, str]]:
    """:func:`list_images`'s files, each with how a symbolic link led to it: ``"file"`` (the file is
    one), ``"folder"`` (a folder on its way is one) or ``""``."""
    found: list[tuple[str, str]] = []
    others: list[str] = []

    def walk(path: str, rel: str, ancestors: frozenset, linked: str) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            _warn(log, f"cannot read folder {path} ({e.strerror or e}); skipped")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    st = os.stat(entry.path)
                except OSError:
                    continue
                if is_run_folder(entry.path):
                    _warn(log, f"{entry.path}: skipped, a folder convspec wrote (a run or tune folder), not data")
                    continue
                ident = (st.st_dev, st.st_ino)
                # Why ancestors, not all seen: two links to one folder are fine. Why the real
                # path too: a link to a folder above ``folder`` (``cat/up -> ..``) is a loop
                # that would first list the other classes' images as this one's.
                if ident in ancestors or (entry.is_symlink() and _contains(entry.path, top)):
                    _warn(log, f"symbolic link loop at {entry.path} (it points to a folder above it); skipped")
                    continue
                walk(entry.path, child, ancestors | {ident}, linked or ("folder" if entry.is_symlink() else ""))
            elif is_image_file(entry.name):
                if not rel and top_is_run and entry.name in OUTPUT_IMAGES:
                    continue  # a plot convspec wrote into the run folder given: not an input
                found.append((child, "file" if entry.is_symlink() else linked))  # a FIFO, a broken link too
            elif not top_is_run:  # a run folder's own files (results.json...) are no news
                others.append(child)

    if not os.path.isdir(folder):
        what = "not a folder" if os.path.lexists(folder) else "folder not found"
        raise DataError(f"{what}: {folder}")
    st = os.stat(folder)
    top = os.path.realpath(folder)
    top_is_run = is_run_folder(folder)
    walk(folder, "", frozenset({(st.st_dev, st.st_ino)}), "")
    if others:
        _warn(
            log,
            f"{folder}: {len(others)} file(s) skipped, not images by their extension "
            f"({' '.join(sorted(IMAGE_EXTENSIONS))}): {short_list(sorted(others), 5)}",
        )
    found.sort()
    return [(os.path.join(folder, *rel.split("/")), linked) for rel, linked in found]


def _contains(link: str, top: str) -> bool:
    """Whether the folder ``link`` resolves to is ``top`` or a folder above it."""
    try:
        target = os.path.realpath(link)
    except OSError:
        return False
    return top == target or top.startswith(target.rstrip(os.sep) + os.sep)


def list_folder(
    root: str, *, key: str = "data.source.path", min_classes: int = 2, log: Callable[[str], None] | None = None
) -> tuple[Samples, list[str]]:
    """List an ImageFolder tree: ``root/<class>/**/<image>``, each image file once (:func:`_once_each`).

    Args:
        root: the folder holding one sub-folder per class.
        key: how errors name the setting ``root`` came from.
        min_classes: fewer class folders is an error (2 for training; 1 suits evaluation).
        log: receives warnings; None uses :func:`warnings.warn`.

    Returns:
        ``(samples, class_names)``; samples grouped by class (in class order), each class's
        files sorted by path.

    Raises:
        DataError: missing path, not a folder, no class folders, a class folder without
            images (all are named), fewer than ``min_classes`` classes, or a file that
            symbolic links put in two classes.
    """
    samples, classes, links = _list_folder(root, key, min_classes, log)
    return _once_each({"": samples}, links, classes, key, log)[""], classes


def _list_folder(
    root: str, key: str, min_classes: int, log: Callable[[str], None] | None
) -> tuple[Samples, list[str], dict[str, str]]:
    """:func:`list_folder`'s samples and classes before :func:`_once_each`, with the files that a
    link led to (``{path: "file" | "folder"}``)."""
    _check_folder(root, key)
    classes = folder_classes(root)
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if not e.name.startswith(".") and e.is_dir() and e.name not in classes:
            _warn(log, f"{e.path}: skipped, a folder convspec wrote (a run or tune folder), not a class")
        elif e.name.startswith(".") and e.is_dir() and _holds_images(e.path):  # Why: it vanished without a word
            _warn(log, f"{e.path}: skipped, a hidden folder (its name starts with '.'), though it holds images")
        elif e.is_symlink() and not os.path.exists(e.path):
            _warn(log, f"{e.path}: skipped, a broken link (target not found), not a class folder")
    if not classes:
        loose = [e.name for e in os.scandir(root) if e.is_file() and is_image_file(e.name)]
        hint = f" (it holds {len(loose)} images directly; move them into one sub-folder per class)" if loose else ""
        raise DataError(
            f"{key}: no class folders in {root}{hint}; expected one sub-folder per "
            f"class, e.g. {os.path.join(root, 'cat', '1.png')}"
        )
    for name in classes:
        if problem := class_name_problem(name):
            raise DataError(f"{key}: class folder {os.path.join(root, name)!r}: {problem}")
    seen: dict[str, str] = {}  # NFC form -> the folder name; Why: "café" as NFC and NFD trained two classes
    for name in classes:
        other = seen.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            raise DataError(
                f"{key}: class folders {other!r} and {name!r} in {root} are one name in two Unicode forms (NFC and "
                "NFD); merge them into one folder"
            )
    samples: Samples = []
    links: dict[str, str] = {}
    empty = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = _walk_images(folder, log)
        if not files:
            empty.append(name)
        samples.extend((f, label) for f, _ in files)
        class_linked = "folder" if os.path.islink(folder) else ""  # cat -> dog
        links.update((f, how or class_linked) for f, how in files if how or class_linked)
    if empty:
        which = "folder" if len(empty) == 1 else "folders"
        raise DataError(
            f"{key}: class {which} without images in {root}: {short_list(empty)} "
            "(image files: .png .jpg .jpeg .bmp .gif .tif .tiff .webp)"
        )
    if len(classes) < min_classes:
        raise DataError(f"{key}: only one class folder ({classes[0]}) in {root}; a classifier needs at least 2 classes")
    return samples, classes, links


def _holds_images(folder: str) -> bool:
    """Whether ``folder`` itself (not below: a hidden ``.git`` may hold thousands of files) has an image file."""
    try:
        with os.scandir(folder) as entries:
            return any(is_image_file(e.name) for e in entries)
    except OSError:
        return False


def _files(n: int) -> str:
    return f"{n} image file is" if n == 1 else f"{n} image files are"


def _once_each(
    groups: dict[str, Samples], links: dict[str, str], classes: list[str], key: str, log: Callable[[str], None] | None
) -> dict[str, Samples]:
    """Each image file once: ``groups`` (the split folders, or ``""``) without the files that
    symbolic links reach a second time (``links``: the files a link led to, and how; none: nothing to do).

    A file reached twice in one class is used once, with a warning. In two classes it would train
    with two labels, and in two split folders it would be scored on what it trained on: both are a
    DataError naming the files. Why by resolved path, not inode: a file is the same file through
    any chain of links, and only links are resolved (no stat per file); hard links count as copies.
    """
    if not links:
        return groups
    real_dirs: dict[str, str] = {}

    def real(path: str) -> str:
        """The file's path with every link resolved: one realpath per folder, and per file that is a link."""
        if links.get(path) == "file":
            target = os.path.realpath(path)
            return target if os.path.exists(target) else path  # a broken link is a bad image, named later
        folder, name = os.path.split(path)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        return os.path.join(real_dirs[folder], name)

    first: dict[str, tuple[str, str, int]] = {}
    twice, clashes = [], []
    out: dict[str, Samples] = {}
    for group, samples in groups.items():
        kept: Samples = []
        for path, label in samples:
            seen = first.setdefault(real(path), (group, path, label))
            if seen == (group, path, label):
                kept.append((path, label))
            elif seen[0] == group and seen[2] == label:
                twice.append(f"{path} (= {seen[1]})")
            else:
                where = f"class {classes[seen[2]]}" if seen[0] == group else f"{seen[0]}/"
                clashes.append(f"{path} is {seen[1]} (in {where})")
        out[group] = kept
    if clashes:
        raise DataError(
            f"{key}: {_files(len(clashes))} reached through symbolic links in two places: "
            f"{short_list(clashes, 5)}. In two classes a file trains with two labels; in two split folders "
            "it is scored on what it trained on. Keep each image in one place"
        )
    if twice:
        _warn(
            log, f"{_files(len(twice))} reached twice through symbolic links; each is used once: {short_list(twice, 5)}"
        )
    return out


def list_split_folders(
    root: str, *, key: str = "data.source.path", log: Callable[[str], None] | None = None
) -> tuple[dict[str, Samples], list[str]]:
    """List ``root/train``, ``root/val`` and optionally ``root/test``, each an ImageFolder tree.

    Returns:
        ``({"train": samples, "val": samples, "test": samples}, class_names)``; ``test`` is an
        empty list when there is no test folder.

    Raises:
        DataError: a missing train/ or val/ folder, any problem :func:`list_folder` finds in
            one of them, or splits whose class folders differ (the differences are named).
    """
    _check_folder(root, key)
    missing = [s for s in ("train", "val") if not os.path.isdir(os.path.join(root, s))]
    if missing:
        present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        raise DataError(
            f"{key}: split from: folders needs {' and '.join(m + '/' for m in missing)} "
            f"in {root} (found: {short_list(present) or 'no folders'})"
        )
    out: dict[str, Samples] = {}
    names: dict[str, list[str]] = {}
    links: dict[str, str] = {}
    for split in SPLIT_FOLDERS:
        sub = os.path.join(root, split)
        if split == "test" and not os.path.isdir(sub):
            out[split] = []
            continue
        out[split], names[split], split_links = _list_folder(sub, f"{key} ({split}/)", 2, log)
        links.update(split_links)
        if os.path.islink(sub):  # test -> train
            links.update((f, links.get(f) or "folder") for f, _ in out[split])
    ref = names["train"]
    for split, found in names.items():
        if found != ref:
            extra, lacking = sorted(set(found) - set(ref)), sorted(set(ref) - set(found))
            forms = other_unicode_form(extra, lacking)
            detail = "; ".join(
                p
                for p in (
                    f"not in train/: {short_list(extra)}" if extra else "",
                    f"missing from {split}/: {short_list(lacking)}" if lacking else "",
                    f"{short_list(forms)}: one name in two Unicode forms (NFC and NFD, as macOS writes it)"
                    if forms
                    else "",
                )
                if p
            )
            raise DataError(f"{key}: {split}/ and train/ must have the same class folders ({detail})")
    return _once_each(out, links, ref, key, log), ref


def list_csv(
    csv_path: str,
    root: str | None = None,
    *,
    key: str = "data.source.path",
    min_classes: int = 2,
    allow_outside_root: bool = False,
) -> tuple[Samples, list[str]]:
    """List images from a CSV with a header row and columns ``path,label``.

    Args:
        csv_path: the CSV file (UTF-8; a byte-order mark is fine).
        root: folder that relative paths start from; default: the CSV's folder.
        key: how errors name the setting ``csv_path`` came from (``root``'s is derived:
            ``data.source.path`` -> ``data.source.root``).
        min_classes: fewer labels is an error (2 for training; 1 suits evaluation).
        allow_outside_root: accept paths that leave ``root`` (``../x.png``, absolute paths);
            by default each such row is an error naming its line.

    Returns:
        ``(samples, class_names)`` in the CSV's row order; paths joined to ``root``.

    Raises:
        DataError: missing file, not a regular file (a FIFO, a device), larger than
            ``LIMITS["csv"]``, missing header, paths outside ``root``, unknown or missing columns, rows with the
            wrong number of fields, empty paths or labels, a file listed twice, files that
            do not exist (all listed), or fewer than ``min_classes`` labels.
    """
    try:
        check_regular(csv_path, "csv")
    except FileReadError as e:
        if e.reason == "file not found":
            raise DataError(f"{key}: CSV file not found: {csv_path}") from None
        if os.path.isdir(csv_path):
            raise DataError(f"{key}: is a folder, not a CSV file: {csv_path}") from None
        raise DataError(f"{key}: {e}") from None
    root = os.path.dirname(os.path.abspath(csv_path)) if root is None else root
    root_key = key[: -len(".path")] + ".root" if key.endswith(".path") else key
    if not os.path.isdir(root):
        _check_folder(root, root_key)
    name = os.path.basename(csv_path)
    reader = None
    try:
        text = read_text(csv_path, "csv", encoding="utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""))
        rows = [(n, row) for n, row in enumerate(reader, start=1) if any(c.strip() for c in row)]
    except FileReadError as e:
        if "not UTF-8" in e.reason:
            raise DataError(f"{key}: {csv_path} is not UTF-8 text") from None
        raise DataError(f"{key}: {e}") from None
    except csv.Error as e:
        where = f":{reader.line_num}" if reader is not None and reader.line_num else ""
        raise DataError(f"{key}: {csv_path}{where} is not a readable CSV ({e})") from None
    if not rows:
        raise DataError(f"{key}: {csv_path} is empty; expected a header row path,label and one row per image")
    header = [c.strip().lower() for c in rows[0][1]]
    expected = ["path", "label"]
    if sorted(header) != sorted(expected):
        if len(header) == 2 and not set(header) & set(expected) and is_image_file(rows[0][1][0].strip()):
            raise DataError(
                f"{name}:1: no header row; the first line must be path,label (found: {','.join(rows[0][1])})"
            )
        unknown = [c for c in header if c not in expected]
        lacking = [c for c in expected if c not in header]
        detail = "; ".join(
            p
            for p in (
                f"unknown: {', '.join(unknown)}" if unknown else "",
                f"missing: {', '.join(lacking)}" if lacking else "",
            )
            if p
        )
        raise DataError(f"{name}:1: columns must be path,label ({detail}; found: {', '.join(header) or 'none'})")
    ip, il = header.index("path"), header.index("label")
    base = os.path.normpath(os.path.abspath(root))
    problems: list[str] = []
    samples_named: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    checked: dict[str, str | None] = {}  # label -> its problem: a few labels over a million rows
    for n, row in rows[1:]:
        if len(row) != 2:
            problems.append(f"{name}:{n}: expected 2 fields (path,label), got {len(row)}")
            continue
        path, label = row[ip].strip(), row[il].strip()
        if not path:
            problems.append(f"{name}:{n}: empty path")
            continue
        if not label:
            problems.append(f"{name}:{n}: empty label for {path}")
            continue
        if label not in checked:
            checked[label] = class_name_problem(label)
        if bad := checked[label]:
            problems.append(f"{name}:{n}: {bad}")
            continue
        full = os.path.normpath(os.path.join(root, os.path.expanduser(path)))
        if not allow_outside_root and not _inside(full, base):
            hint = (
                "set data.source.allow_outside_root: true to allow it"
                if key.startswith("data.source")
                else "list paths relative to the CSV's folder, inside it"
            )
            problems.append(f"{name}:{n}: {path} is outside the CSV's root {root} ({hint})")
            continue
        if full in first_line:
            problems.append(f"{name}:{n}: {path} is listed twice (first on line {first_line[full]})")
            continue
        first_line[full] = n
        samples_named.append((full, label))
    if problems:
        more = f"\n  ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
        rows_word = "row" if len(problems) == 1 else "rows"
        shown = "\n  ".join(problems[:_SHOW])
        if len(problems) == 1:  # Why: one line, as every refusal (each problem names the CSV and its line)
            raise DataError(f"{key}: {problems[0]}")
        where = "" if key == csv_path else f" in {csv_path}"
        raise DataError(f"{key}: {len(problems)} bad {rows_word}{where}:\n  {shown}{more}")
    if not samples_named:
        raise DataError(f"{key}: {csv_path} has a header but no rows")
    stats = [_stat(p) for p, _ in samples_named]  # Why one stat per row: a million rows took 3 before
    modes = [st.st_mode if st is not None else None for st in stats]
    odd = [(p, m) for (p, _), m in zip(samples_named, modes, strict=True) if m is not None and not stat.S_ISREG(m)]
    if odd:  # a folder, a FIFO, a device listed as an image: say what it is, never "missing"
        shown = [f"{os.path.relpath(p, root)} ({describe_mode(m)})" for p, m in odd[:_SHOW]]
        raise DataError(
            f"{key}: {len(odd)} paths listed in {name} are not regular files: {short_list(shown, total=len(odd))}"
        )
    missing = [p for (p, _), m in zip(samples_named, modes, strict=True) if m is None]
    if missing:
        shown = [os.path.relpath(p, root) for p in missing[:_SHOW]]
        raise DataError(
            f"{key}: {len(missing)} files listed in {name} do not exist "
            f"(paths are relative to {root}): {short_list(shown, total=len(missing))}"
        )
    same = _same_files(samples_named, stats, first_line, name, root)
    if same:  # Why: one file under two names carried two labels, or sat in train and test at once
        shown = "\n  ".join(same[:_SHOW]) + (f"\n  ... and {len(same) - _SHOW} more" if len(same) > _SHOW else "")
        raise DataError(
            f"{key}: {len(same)} rows of {csv_path} name a file listed before under another name:\n  {shown}"
        )
    class_names = sort_names({label for _, label in samples_named})
    if len(class_names) < min_classes:
        raise DataError(f"{key}: {name} has only one label ({class_names[0]}); a classifier needs at least 2 classes")
    index = {c: i for i, c in enumerate(class_names)}
    return [(p, index[label]) for p, label in samples_named], class_names


def _inside(path: str, base: str) -> bool:
    """Whether the normalised ``path`` is the absolute, normalised ``base`` or below it (by name:
    links inside are the user's)."""
    full = path if os.path.isabs(path) else os.path.normpath(os.path.abspath(path))
    return full == base or full.startswith(base.rstrip(os.sep) + os.sep)


def _stat(path: str) -> os.stat_result | None:
    """``os.stat`` of what ``path`` names (links followed), None when nothing is there."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _same_files(samples, stats, first_line: dict[str, int], name: str, root: str) -> list[str]:
    """Rows naming a file that an earlier row named under another path (a symbolic or hard link)."""
    seen: dict[tuple[int, int], str] = {}
    same = []
    for (path, _), st in zip(samples, stats, strict=True):
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            same.append(
                f"{name}:{first_line[path]}: {os.path.relpath(path, root)} is {os.path.relpath(first, root)} "
                f"of line {first_line[first]} (a link)"
            )
    return same


def _check_folder(root: str, key: str) -> None:
    if not os.path.exists(root):
        raise DataError(f"{key}: folder not found: {root}")
    if not os.path.isdir(root):
        raise DataError(f"{key}: not a folder: {root}")
