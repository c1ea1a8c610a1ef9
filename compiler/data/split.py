"""The split: which images train, validate and test. A pure function of the file ids, their
labels and the seed, saved as ``split.json`` so that resumed runs and evaluation reuse it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from convspec.runtime.datasets import DataError, short_list
from convspec.runtime.files import atomic_write_text
from convspec.specs.errors import format_path
from convspec.specs.readfile import parse_json

from .dataset import SPLITS, Dataset, file_id

Log = Callable[[str], None]
MAX_SPLIT_BYTES = 256 << 20  # Why so large: millions of file names; the limit only stops runaway reads


def make_split(
    ids: list[str],
    labels: list[str],
    *,
    train: float,
    val: float,
    test: float,
    stratify: bool = True,
    seed: int = 0,
    log: Log = print,
) -> dict[str, np.ndarray]:
    """Split by fractions: a pure function of the file ids, their labels and the seed.

    The ids are sorted first, so neither listing order nor class order changes the result;
    labels are class *names* for the same reason. The test set is cut first, then val from
    the rest (sizes are fractions of the whole, at least 1 when the fraction is above 0),
    each with scikit-learn's ``train_test_split``, stratified when asked and possible (a
    class too small to stratify falls back to a plain shuffle, with a warning).

    Returns:
        ``{"train", "val", "test"}`` -> sorted int64 indices into ``ids``.

    Raises:
        DataError: too few images to give train at least one.
    """
    n = len(ids)
    n_test, n_val = _count(test, n), _count(val, n)
    if n - n_test - n_val < 1:
        raise DataError(f"data.split: {n} images are too few for train {train}, val {val}, test {test}")
    order = np.asarray(sorted(range(n), key=ids.__getitem__), np.int64)
    y = np.asarray(labels, dtype=object)[order]  # labels in sorted-id order
    positions = np.arange(n)
    rest, test_pos = _cut(positions, y, n_test, stratify, seed, "test", log)
    train_pos, val_pos = _cut(rest, y[rest], n_val, stratify, seed, "val", log)
    return {
        name: np.sort(order[pos]).astype(np.int64)
        for name, pos in (("train", train_pos), ("val", val_pos), ("test", test_pos))
    }


def _count(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 else max(1, int(np.floor(fraction * n + 0.5)))


def _cut(pos: np.ndarray, y: np.ndarray, k: int, stratify: bool, seed: int, what: str, log: Log):
    """Split ``pos`` into (rest, k held out)."""
    if k == 0:
        return pos, np.empty(0, np.int64)
    from sklearn.model_selection import train_test_split

    if stratify:
        try:
            rest, held = train_test_split(pos, test_size=k, stratify=y, random_state=seed, shuffle=True)
            return rest, held
        except ValueError as e:
            log(f"warning: cannot stratify the {what} split ({e}); splitting without stratification")
    rest, held = train_test_split(pos, test_size=k, random_state=seed, shuffle=True)
    return rest, held


def save_split(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``split.json`` atomically: class names, and per split the file ids and labels.

    Format::

        {"version": 1, "root": "/data/xray", "class_names": ["normal", "pneumonia"],
         "splits": {"train": {"files": ["normal/1.png", ...], "labels": ["normal", ...]},
                    "val": {...}, "test": {...}}}
    """
    ids = dataset.file_ids()
    doc = {"version": 1, "root": dataset.root, "class_names": list(dataset.class_names), "splits": {}}
    for split in SPLITS:
        idx = dataset.splits.get(split, np.empty(0, np.int64))
        doc["splits"][split] = {
            "files": [ids[i] for i in idx],
            "labels": [dataset.class_names[dataset.labels[i]] for i in idx],
        }
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    # Why: a file name that is not UTF-8 (bytes 0x80-0xff) reaches Python as a lone surrogate, which
    # UTF-8 cannot encode; as a JSON escape it stays valid UTF-8 and reads back as the same name.
    text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return atomic_write_text(path, text + "\n")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    files: list[str]
    labels: list[str]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.files) != len(self.labels):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        return self


class _SplitFile(BaseModel):
    """The structure :func:`save_split` writes (checked, so that a hand-edited file is named, not a traceback)."""

    model_config = ConfigDict(strict=True, extra="allow")
    version: Literal[1]
    root: str | None = None
    class_names: list[str]
    splits: dict[Literal["train", "val", "test"], _Part]

    @model_validator(mode="after")
    def _complete(self):
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"splits: missing {', '.join(missing)}")
        if not self.splits["train"].files:
            raise ValueError("splits.train: no files; a run trains on at least one image")
        unknown = sorted({lab for p in self.splits.values() for lab in p.labels} - set(self.class_names))
        if unknown:
            raise ValueError(f"labels not in class_names: {short_list(unknown)}")
        first: dict[str, str] = {}
        twice = []
        for name in SPLITS:
            for f in self.splits[name].files:
                if f in first:
                    twice.append(f"{f} ({first[f]} and {name})")
                first.setdefault(f, name)
        if twice:
            raise ValueError(
                f"{len(twice)} files are listed twice (a file in two splits leaks into the scores): {short_list(twice)}"
            )
        return self


def read_split(path: str | os.PathLike) -> dict:
    """Read and check a ``split.json`` written by :func:`save_split`.

    Raises:
        DataError: the file is missing, not a regular file, too large, not JSON, or not a split
            file (wrong types, missing keys, labels outside class_names), naming the first problem.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise DataError(f"{path}: not a regular file; not a readable split file")
        if path.is_file() and path.stat().st_size > MAX_SPLIT_BYTES:
            raise DataError(f"{path}: larger than {MAX_SPLIT_BYTES >> 20} MiB; not a readable split file")
        doc = parse_json(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable split file ({e})") from None
    try:
        _SplitFile.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        key = format_path(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise DataError(
            f"{path}: not a convspec split file: {key + ': ' if key else ''}{msg[:1].lower() + msg[1:]} "
            "(expected version 1 with class_names and splits train/val/test, each with files and labels)"
        ) from None
    return doc


def check_listed(path, doc: dict, files: list[str], root: str) -> None:
    """Refuse a saved split naming files that the listing no longer has, before any image decodes.

    Why before decoding: a resumed run of 10,000 photos learnt of a deleted file only after 6-10 s
    of decoding; files that fail to decode are caught later, by :func:`apply_split_file`.
    """
    listed = {file_id(f, root) for f in files}
    missing = [fid for split in SPLITS for fid in doc["splits"][split]["files"] if fid not in listed]
    if missing:
        raise DataError(f"{path}: {len(missing)} files of the saved split are not in the data: {short_list(missing)}")


def apply_split_file(path, ds: Dataset, log: Log, doc: dict | None = None) -> dict[str, np.ndarray]:
    """The saved split's indices into ``ds`` (``doc``: the file as :func:`read_split` returned it)."""
    doc = read_split(path) if doc is None else doc
    if doc["class_names"] != ds.class_names:
        raise DataError(
            f"{path}: its classes ({short_list(doc['class_names'])}) differ from the data's "
            f"({short_list(ds.class_names)})"
        )
    where = {fid: i for i, fid in enumerate(ds.file_ids())}
    bad = {p for p, _ in ds.bad_files}
    splits, missing, relabelled, used = {}, [], 0, 0
    for split in SPLITS:
        part = doc["splits"][split]
        idx = []
        for fid, label in zip(part["files"], part["labels"], strict=True):
            i = where.get(fid)
            if i is None:
                missing.append(fid)
                continue
            relabelled += ds.class_names[ds.labels[i]] != label
            idx.append(i)
        splits[split] = np.sort(np.asarray(idx, np.int64))
        used += len(idx)
    if missing:
        unreadable = sum(1 for m in missing if os.path.join(ds.root or "", m) in bad or m in bad)
        note = f" ({unreadable} of them failed to decode)" if unreadable else ""
        raise DataError(
            f"{path}: {len(missing)} files of the saved split are not in the data{note}: {short_list(missing)}"
        )
    if relabelled:
        log(f"warning: {relabelled} images have a different label than in {path}; using the data's labels")
    if used < len(ds):
        listed = {int(i) for part in splits.values() for i in part}
        unused = [ds.file_id(i) for i in range(len(ds)) if i not in listed]
        log(f"warning: {len(unused)} images of the data are not in {path} and are not used: {short_list(unused)}")
    return splits
