"""The training data pipeline: ``spec.data`` + ``spec.input`` -> a decoded, labelled, split :class:`Dataset`.

Each image is decoded once, by the runtime's loader (:mod:`convspec.runtime.images`, the
same code that serves the exported model), into a uint8 ``(N, C, H, W)`` array that every
epoch reads from. The split is a pure function of the file list, the labels and the seed,
and is saved as ``split.json`` so that resumed runs and evaluation use exactly the same
images. No torch here: numpy, Pillow and scikit-learn only. Decoding and the cache
(``data.cache``) are :mod:`.decoding`'s.

``Dataset.images`` is read-only in every mode; index it (``images[idx]``) for a writable batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convspec.runtime.datasets import (
    DataError,
    list_csv,
    list_folder,
    list_split_folders,
    short_list,
)
from convspec.runtime.images import prepare_array, sample_pixels
from convspec.runtime.modes import FLOAT_UNIT_TOP
from convspec.specs.classes import DIGITS, classes_mismatch, sort_names
from convspec.specs.errors import one_line

from .dataset import SPLITS, Dataset
from .decoding import decode_files, default_cache_dir
from .split import apply_split_file, check_listed, make_split, read_split

__all__ = ["DataError", "Dataset", "default_cache_dir", "load_dataset"]

Log = Callable[[str], None]


def load_dataset(
    spec,
    *,
    split_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Log = print,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Dataset:
    """List, check, decode (or read from the cache) and split the data a spec describes.

    Args:
        spec: a validated :class:`convspec.specs.Spec` (its source paths already absolute).
        split_file: a ``split.json`` written by :func:`save_split`; its split is used
            exactly (resume, evaluation) instead of computing one.
        cache_dir: folder of the disk cache; default ``$CONVSPEC_CACHE`` or ``~/.cache/convspec``.
        log: receives progress lines and warnings (``warning: ...``).
        progress: called with ``(done, total)`` while images decode.
        workers: decoding threads (default: CPUs + 4, at most 32).

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: the data cannot be listed, its classes do not match ``classes`` or the
            task, every image of a class failed, too few images to split, or the split
            file does not fit the data.
        ImageError: a file failed to decode and ``data.on_bad_image`` is ``error``.
    """
    src = spec.data.source
    channels, size, resize = spec.input.channels, tuple(int(s) for s in spec.input.size), spec.input.resize

    def warn(message: str) -> None:
        log(f"warning: {message}")

    preset: dict[str, list[int]] | None = None
    saved = None  # the split file's contents, read before decoding
    if src.type == "builtin":
        images, labels, files, data_names = _digits(src.classes, channels, size, resize)
        bad: list[tuple[str, str]] = []
        root = None
    else:
        if src.type == "folder" and spec.data.split.from_ == "folders":
            per_split, data_names = list_split_folders(src.path, log=log)  # they prefix warning: themselves
            samples, preset = [], {}
            for split in SPLITS:
                preset[split] = list(range(len(samples), len(samples) + len(per_split[split])))
                samples += per_split[split]
            root = src.path
        elif src.type == "folder":
            samples, data_names = list_folder(src.path, log=log)
            root = src.path
        else:
            samples, data_names = list_csv(src.path, src.root, allow_outside_root=src.allow_outside_root)
            root = src.root or os.path.dirname(os.path.abspath(src.path))
        _resolve_classes(spec, data_names)  # Why here too: fail before minutes of decoding
        all_files = [p for p, _ in samples]
        if split_file is not None:
            saved = read_split(split_file)
            check_listed(split_file, saved, all_files, root)
        images, kept, bad = decode_files(
            all_files,
            channels,
            size,
            resize,
            bits_stored=spec.input.bits_stored,
            mode=spec.data.cache,
            cache_dir=cache_dir,
            on_error=spec.data.on_bad_image,
            log=log,
            progress=progress,
            workers=workers,
        )
        _check_pixels(all_files, spec.input.bits_stored, warn)
        files = [all_files[i] for i in kept]
        labels = np.asarray([samples[i][1] for i in kept], np.int64)
        if preset is not None:
            _check_split_folders(preset, kept, samples, data_names)
            new_index = {old: new for new, old in enumerate(kept)}
            preset = {s: [new_index[i] for i in idx if i in new_index] for s, idx in preset.items()}
        if bad:
            warn(f"skipped {len(bad)} unreadable image{'s' if len(bad) != 1 else ''} (data.on_bad_image: skip):")
            for path, reason in bad:
                log(f"  {one_line(path)}: {reason}")

    class_names, remap = _resolve_classes(spec, data_names)
    labels = remap[labels] if len(labels) else labels.astype(np.int64)
    present = np.bincount(labels, minlength=len(class_names))
    lost = [name for name, n in zip(class_names, present, strict=True) if n == 0]
    if lost:
        raise DataError(f"data: every image of class {short_list(lost)} failed to load; see the warnings above")

    ds = Dataset(class_names, images, labels, files, {}, bad, root)
    if split_file is not None:
        ds.splits = apply_split_file(split_file, ds, log, saved)
    elif preset is not None:
        ds.splits = {s: np.asarray(idx, np.int64) for s, idx in preset.items()}
    else:
        sp = spec.data.split
        names = [class_names[i] for i in labels]
        ds.splits = make_split(
            ds.file_ids(), names, train=sp.train, val=sp.val, test=sp.test, stratify=sp.stratify, seed=sp.seed, log=log
        )
    n = {s: len(ds.splits[s]) for s in SPLITS}
    log(
        f"data: {len(ds)} images ({channels}x{size[0]}x{size[1]}), {len(class_names)} classes; "
        f"train {n['train']}, val {n['val']}, test {n['test']}"
    )
    return ds


def _check_split_folders(preset: dict[str, list[int]], kept: list[int], samples, names: list[str]) -> None:
    """Refuse a split folder's class whose every image failed to load. Why: test/cat of 0-byte files
    left the test split without cats, scored 100 % with exit 0 (the data as a whole still had cats)."""
    alive = set(kept)
    for split, idx in preset.items():
        listed = {samples[i][1] for i in idx}
        loaded = {samples[i][1] for i in idx if i in alive}
        lost = sorted(listed - loaded)
        if lost:
            raise DataError(
                f"data: every image of class {short_list([names[c] for c in lost])} in {split}/ failed to load; "
                "see the warnings above"
            )


def _check_pixels(files: list[str], bits_stored: int, warn: Callable[[str], None]) -> None:
    """Warn when sampled 16-bit or float images will not become the 8-bit pixels their owner means.

    Why: each case trains worse without a word. A 12-bit X-ray scaled as full-range 16-bit keeps 16
    grey levels (on 12-bit faces: 87 % test accuracy against 97 % with bits_stored: 12); signed CT
    loses everything below 0; a 1000..1400 scanner window keeps 2 levels; float images are read on
    the 0..1 or the 0..255 scale image by image; 16-bit colour is read at 8 bits by Pillow.
    """
    sampled = sample_pixels(files)
    grey = [p for p in sampled if p.kind == "16-bit"]
    top = (1 << bits_stored) - 1
    if grey:
        _check_sixteen_bit(grey, bits_stored, warn)
    floats = [p for p in sampled if p.kind == "float"]
    unit = [p for p in floats if p.high <= FLOAT_UNIT_TOP]
    if unit and len(unit) < len(floats):
        wide = next(p for p in floats if p.high > FLOAT_UNIT_TOP)
        warn(
            f"float images are read on the 0..1 scale when their largest value is at most {FLOAT_UNIT_TOP:g}, "
            f"else on 0..255: of {len(floats)} sampled, {len(unit)} are on 0..1 and {len(floats) - len(unit)} not "
            f"(e.g. {one_line(wide.path)}, up to {wide.high:g}); store every image on one scale"
        )
    over = [p for p in floats if p.high > 255]
    if over:
        warn(
            f"float images hold values above 255 (e.g. {one_line(over[0].path)}, up to {over[0].high:g}; "
            f"{len(over)} of {len(floats)} sampled), which become white; store them on 0..1 or 0..255, "
            "or as 16-bit integers (with input.bits_stored)"
        )
    colour = [p for p in sampled if p.kind == "16-bit colour"]
    if colour and bits_stored != 16:
        warn(
            f"input.bits_stored: {bits_stored} applies to 16-bit grey images; {one_line(colour[0].path)} is 16-bit "
            f"colour (RGB or grey+alpha), which Pillow reads at 8 bits, from each value's high byte: values up to "
            f"{top} keep {(top >> 8) + 1} grey levels. Save such images as 16-bit grey"
        )


def _check_sixteen_bit(grey: list, bits_stored: int, warn: Callable[[str], None]) -> None:
    top = (1 << bits_stored) - 1
    low, peak = min(p.low for p in grey), max(p.high for p in grey)
    used = max(8, int(peak).bit_length())
    sampled = f"in {len(grey)} sampled"

    def levels(lo: float, hi: float) -> int:  # 8-bit levels that lo..hi spans after scaling
        return int(min(hi, top) * 255 // top) - int(max(lo, 0) * 255 // top) + 1

    if low < 0:
        warn(
            f"the 16-bit images hold negative values (down to {low:g}, {sampled}), which become black: "
            f"convspec reads 0..{top}. Shift them to start at 0 before training (CT in Hounsfield units: add 1024)"
        )
        return  # Why no bit-depth advice: the shift moves the peak it would be read from
    if peak > top:
        warn(
            f"input.bits_stored is {bits_stored}, but the 16-bit images hold values up to {peak:g} ({sampled}); "
            f"values above {top} become white (set input.bits_stored: {used})"
        )
    elif used <= bits_stored - 2:
        warn(
            f"the 16-bit images hold values up to {peak:g} ({used} bits, {sampled}); scaled by 255/{top} they keep "
            f"{levels(max(low, 0), peak)} grey levels. If they are {used}-bit images (X-rays and CT often are), "
            f"set input.bits_stored: {used}"
        )
        return
    # Why >= 16 values apart: stretching a window that narrow gains levels; a flat image gains none
    narrow = [p for p in grey if levels(p.low, p.high) < 16 <= p.high - p.low]
    if narrow:
        n = narrow[0]
        warn(
            f"{len(narrow)} of {len(grey)} sampled 16-bit images use a narrow window of values, e.g. "
            f"{one_line(n.path)}: {n.low:g}..{n.high:g}, which keeps {levels(n.low, n.high)} grey levels after "
            f"scaling by 255/{top}; stretch such images to their range before training"
        )


def _resolve_classes(spec, data_names: list[str]) -> tuple[list[str], np.ndarray]:
    """``classes`` + the data's (sorted) names -> final class order and old->new label map."""
    declared = spec.classes
    if declared == "auto" or isinstance(declared, int):
        names = list(data_names)
        if isinstance(declared, int) and declared != len(names):
            raise DataError(f"classes: {declared}, but the data has {len(names)} classes ({short_list(names)})")
    else:
        names = [str(c) for c in declared]
        if set(names) != set(data_names):
            raise DataError(f"classes must match the data's classes ({classes_mismatch(names, data_names)})")
    if spec.task == "binary" and len(names) != 2:
        raise DataError(f"task: binary needs exactly 2 classes; the data has {len(names)} ({short_list(names)})")
    position = {name: i for i, name in enumerate(names)}
    return names, np.asarray([position[n] for n in data_names], np.int64)


def _digits(subset, channels: int, size: tuple[int, int], resize: str):
    """scikit-learn's 8x8 digits as uint8 ``(N, C, H, W)``: 0..16 -> round(x * 255 / 16)."""
    raw = _digits_table()  # (1797, 65): 64 pixels in 0..16, then the label
    pixels = np.rint(raw[:, :64].reshape(-1, 8, 8) * 255.0 / 16.0).astype(np.uint8)  # (1797, 8, 8)
    target = raw[:, 64].astype(np.int64)
    names = sort_names(set(subset)) if subset else list(DIGITS)
    index = np.flatnonzero(np.isin(target, [int(n) for n in names]))
    out = np.empty((len(index), channels, *size), np.uint8)  # (N, C, H, W)
    for row, i in enumerate(index):
        out[row] = prepare_array(pixels[i], channels, size, resize)  # same code path as files
    position = {int(n): k for k, n in enumerate(names)}
    labels = np.asarray([position[int(t)] for t in target[index]], np.int64)
    out.flags.writeable = False
    return out, labels, [f"digits:{i}" for i in index], names


def _digits_table() -> np.ndarray:
    """scikit-learn's ``datasets/data/digits.csv.gz``, the file ``load_digits`` reads, as float64.

    Why not ``load_digits``: importing ``sklearn.datasets`` costs about 1 s of start-up (it pulls
    scipy and the dataset fetchers); the file is found without importing scikit-learn at all.
    """
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:  # pragma: no cover - a core dependency
        raise ModuleNotFoundError("the builtin digits data set needs scikit-learn, a dependency of convspec")
    folder = Path(next(iter(found.submodule_search_locations)))
    return np.loadtxt(folder / "datasets" / "data" / "digits.csv.gz", delimiter=",")
