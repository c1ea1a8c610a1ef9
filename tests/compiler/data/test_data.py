"""The training data pipeline on real (small) data: sources, classes, bad images, split, cache, stats."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from convspec.compiler.data.loading import (
    Dataset,
    default_cache_dir,
    load_dataset,
)
from convspec.compiler.data.split import make_split, read_split, save_split
from convspec.runtime.datasets import DataError
from convspec.runtime.images import ImageError
from convspec.specs import spec_from_dict


def make_spec(
    source,
    *,
    base_dir="/",
    channels=1,
    size=(16, 16),
    resize="stretch",
    task="multiclass",
    classes="auto",
    split=None,
    cache="none",
    on_bad_image="skip",
    bits_stored=16,
):
    data = {"source": source, "cache": cache, "on_bad_image": on_bad_image}
    if split is not None:
        data["split"] = split
    return spec_from_dict(
        {
            "version": 1,
            "task": task,
            "classes": classes,
            "data": data,
            "input": {"channels": channels, "size": list(size), "resize": resize, "bits_stored": bits_stored},
            "model": {"layers": [{"type": "flatten"}]},
        },
        base_dir=str(base_dir),
    )


class Log(list):
    def __call__(self, line):
        self.append(line)

    def warnings(self):
        return [m for m in self if m.startswith("warning:")]


DIGITS = {"type": "builtin", "name": "digits"}


def digits_uint8():
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255.0 / 16.0).astype(np.uint8), d.target


# ----------------------------------------------------------------- builtin


def test_digits_at_16x16():
    ds = load_dataset(make_spec(DIGITS), log=Log())
    pixels, target = digits_uint8()
    assert isinstance(ds, Dataset)
    assert ds.images.shape == (1797, 1, 16, 16) and ds.images.dtype == np.uint8
    assert ds.class_names == [str(i) for i in range(10)]
    assert np.array_equal(ds.labels, target) and ds.labels.dtype == np.int64
    assert ds.files[17] == "digits:17" and ds.root is None
    assert not ds.images.flags.writeable


def test_digits_pixels_map_0_16_to_uint8():
    ds = load_dataset(make_spec(DIGITS, size=(8, 8)), log=Log())
    from sklearn.datasets import load_digits

    raw = load_digits().images
    assert np.array_equal(ds.images[:, 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert ds.images.max() == 255 and set(np.unique(ds.images[:, 0][raw == 8])) == {128}


def test_digit_png_equals_builtin_pixels(digits_folder):
    builtin = load_dataset(make_spec(DIGITS, size=(8, 8)), log=Log())
    folder = load_dataset(make_spec({"type": "folder", "path": str(digits_folder)}, size=(8, 8)), log=Log())
    assert len(folder) == len(list(digits_folder.glob("*/*.png"))) >= 100
    assert folder.class_names == builtin.class_names
    for i, path in enumerate(folder.files):
        index = int(os.path.splitext(os.path.basename(path))[0])
        assert np.array_equal(folder.images[i], builtin.images[index])
        assert folder.labels[i] == builtin.labels[index]


def test_digits_class_subset_and_rgb():
    ds = load_dataset(make_spec({**DIGITS, "classes": [8, 3]}, task="binary", channels=3), log=Log())
    _, target = digits_uint8()
    assert ds.class_names == ["3", "8"]
    assert len(ds) == int(((target == 3) | (target == 8)).sum())
    assert np.array_equal(ds.labels, (target[np.isin(target, [3, 8])] == 8).astype(np.int64))
    assert ds.images.shape[1:] == (3, 16, 16)
    assert np.array_equal(ds.images[:, 0], ds.images[:, 2])


def test_explicit_class_order_relabels():
    order = [str(i) for i in reversed(range(10))]
    ds = load_dataset(make_spec(DIGITS, classes=order), log=Log())
    _, target = digits_uint8()
    assert ds.class_names == order
    assert np.array_equal(ds.labels, 9 - target)


# -------------------------------------------------------- classes vs data


def test_classes_that_do_not_match_the_data(tmp_path):
    root = tmp_path / "data"  # created after validation: only load time can check
    spec = make_spec({"type": "folder", "path": str(root)}, classes=["cat", "dog"])
    binary = make_spec({"type": "folder", "path": str(root)}, task="binary")
    count = make_spec({"type": "folder", "path": str(root)}, classes=2)
    for name in ("cat", "emu", "fox"):
        (root / name).mkdir(parents=True)
        Image.new("L", (4, 4)).save(root / name / "1.png")
    with pytest.raises(
        DataError,
        match=(
            r"classes must match the data's classes \(in the data but not listed: emu, fox; listed but not in the "
            r"data: dog\)"
        ),
    ):
        load_dataset(spec, log=Log())
    with pytest.raises(DataError, match=r"task: binary needs exactly 2 classes; the data has 3 \(cat, emu, fox\)"):
        load_dataset(binary, log=Log())
    with pytest.raises(DataError, match="classes: 2, but the data has 3 classes"):
        load_dataset(count, log=Log())


# ------------------------------------------------------------- bad images


@pytest.fixture
def dirty_shapes(tmp_path, shapes_folder):
    root = tmp_path / "shapes"
    shutil.copytree(shapes_folder, root)
    raw = (root / "circle" / "00.png").read_bytes()
    (root / "circle" / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (root / "square" / "empty.jpg").write_bytes(b"")
    (root / "triangle" / "text.png").write_text("this is not a PNG")
    (root / "triangle" / "notes.txt").write_text("ignored: not an image name")
    os.mkfifo(root / "circle" / "pipe.png")  # never opened: it would block the loader forever
    os.symlink("/dev/zero", root / "square" / "zero.jpg")
    return root


def test_bad_images_are_skipped_and_named(dirty_shapes):
    log = Log()
    ds = load_dataset(make_spec({"type": "folder", "path": str(dirty_shapes)}, channels=3, size=(24, 24)), log=log)
    assert len(ds) == 36 and ds.images.shape == (36, 3, 24, 24)
    bad = dict(ds.bad_files)
    assert bad == {
        str(dirty_shapes / "circle" / "truncated.png"): "cannot decode image (truncated file)",
        str(dirty_shapes / "square" / "empty.jpg"): "empty file (0 bytes)",
        str(dirty_shapes / "triangle" / "text.png"): "not an image (unrecognised format)",
        str(dirty_shapes / "circle" / "pipe.png"): "is a FIFO (named pipe), not a regular file",
        str(dirty_shapes / "square" / "zero.jpg"): "is a device, not a regular file",
    }
    text = "\n".join(log)
    assert "warning: skipped 5 unreadable images" in text
    assert all(path in text for path in bad)
    assert not any(f.endswith(("truncated.png", "empty.jpg", "text.png", "pipe.png", "zero.jpg")) for f in ds.files)
    assert ds.counts()["train"]["circle"] + ds.counts()["val"]["circle"] + ds.counts()["test"]["circle"] == 12


def test_on_bad_image_error_raises(dirty_shapes):
    spec = make_spec({"type": "folder", "path": str(dirty_shapes)}, on_bad_image="error")
    with pytest.raises(ImageError, match="pipe.png: is a FIFO"):  # the first bad file, in order
        load_dataset(spec, log=Log())


def test_a_class_with_only_bad_images_is_an_error(tmp_path, shapes_folder):
    root = tmp_path / "d"
    shutil.copytree(shapes_folder / "circle", root / "circle")
    (root / "junk").mkdir()
    (root / "junk" / "a.png").write_text("x")
    with pytest.raises(DataError, match="every image of class junk failed to load"):
        load_dataset(make_spec({"type": "folder", "path": str(root)}), log=Log())


# --------------------------------------------------------------------- csv


def test_csv_source(tmp_path, shapes_folder):
    rows = ["path,label"] + [f"{s}/{k:02d}.png,{s}" for s in ("circle", "square") for k in range(12)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    spec = make_spec(
        {"type": "csv", "path": "labels.csv", "root": str(shapes_folder)},
        base_dir=tmp_path,
        channels=3,
        size=(20, 20),
        resize="letterbox",
    )
    ds = load_dataset(spec, log=Log())
    assert ds.class_names == ["circle", "square"] and len(ds) == 24
    assert ds.root == str(shapes_folder) and ds.file_ids()[0] == "circle/00.png"
    assert ds.labels.tolist() == [0] * 12 + [1] * 12


def test_csv_unknown_columns_and_labels(tmp_path, shapes_folder):
    shutil.copytree(shapes_folder, tmp_path / "img")
    (tmp_path / "cols.csv").write_text("path,label,weight\nimg/circle/00.png,circle,1\nimg/square/00.png,square,1\n")
    with pytest.raises(DataError, match=r"columns must be path,label \(unknown: weight"):
        load_dataset(make_spec({"type": "csv", "path": "cols.csv"}, base_dir=tmp_path), log=Log())
    # validation reads the CSV too; write it after, so the check at load time is the one tested
    spec = make_spec({"type": "csv", "path": "labels.csv"}, base_dir=tmp_path, classes=["circle", "square"])
    (tmp_path / "labels.csv").write_text("path,label\nimg/circle/00.png,circle\nimg/square/00.png,squar\n")
    with pytest.raises(DataError, match="in the data but not listed: squar; listed but not in the data: square"):
        load_dataset(spec, log=Log())


# ------------------------------------------------------------------- split


def test_split_is_reproducible_stratified_and_disjoint():
    spec = make_spec(DIGITS, size=(8, 8), split={"train": 0.7, "val": 0.15, "test": 0.15, "seed": 3})
    a = load_dataset(spec, log=Log())
    b = load_dataset(spec, log=Log())
    n = len(a)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.splits[s], b.splits[s])
    every = np.concatenate([a.splits[s] for s in ("train", "val", "test")])
    assert np.array_equal(np.sort(every), np.arange(n))
    assert len(a.splits["test"]) == round(0.15 * n) and len(a.splits["val"]) == round(0.15 * n)
    overall = np.bincount(a.labels, minlength=10) / n
    for s in ("train", "val", "test"):
        share = np.bincount(a.labels[a.splits[s]], minlength=10) / len(a.splits[s])
        assert np.abs(share - overall).max() < 0.02  # stratified
    other = make_split(a.file_ids(), [a.class_names[i] for i in a.labels], train=0.7, val=0.15, test=0.15, seed=4)
    assert not np.array_equal(other["test"], a.splits["test"])


def test_split_depends_on_ids_not_on_order():
    ids = [f"img/{i:03d}.png" for i in range(60)]
    labels = ["a" if i % 3 else "b" for i in range(60)]
    base = make_split(ids, labels, train=0.6, val=0.2, test=0.2, seed=0, log=Log())
    perm = np.random.default_rng(1).permutation(60)
    shuffled = make_split(
        [ids[i] for i in perm], [labels[i] for i in perm], train=0.6, val=0.2, test=0.2, seed=0, log=Log()
    )
    for s in base:
        assert sorted(ids[i] for i in base[s]) == sorted(ids[perm[i]] for i in shuffled[s])


def test_split_without_val_or_test_and_unstratifiable():
    ids = [str(i) for i in range(20)]
    labels = ["a"] * 19 + ["b"]  # b has one image: cannot be stratified
    log = Log()
    sp = make_split(ids, labels, train=0.8, val=0.2, test=0.0, seed=0, log=log)
    assert len(sp["test"]) == 0 and len(sp["val"]) == 4 and len(sp["train"]) == 16
    assert any("cannot stratify the val split" in m for m in log.warnings())
    with pytest.raises(DataError, match="too few"):
        make_split(["a", "b"], ["x", "y"], train=0.5, val=0.25, test=0.25)


def test_split_saved_and_reused_exactly(tmp_path, digits_folder):
    spec = make_spec({"type": "folder", "path": str(digits_folder)}, size=(8, 8))
    ds = load_dataset(spec, log=Log())
    path = save_split(ds, tmp_path / "run" / "split.json")
    doc = read_split(path)
    assert doc["class_names"] == ds.class_names and doc["root"] == str(digits_folder)
    assert doc["splits"]["test"]["files"][0].count("/") == 1  # "<class>/<index>.png", portable
    other_seed = make_spec(
        {"type": "folder", "path": str(digits_folder)},
        size=(8, 8),
        split={"train": 0.5, "val": 0.25, "test": 0.25, "seed": 9},
    )
    again = load_dataset(other_seed, split_file=path, log=Log())
    for s in ("train", "val", "test"):
        assert np.array_equal(again.splits[s], ds.splits[s])


def test_split_file_with_missing_files(tmp_path, digits_folder):
    root = tmp_path / "digits"
    shutil.copytree(digits_folder, root)
    spec = make_spec({"type": "folder", "path": str(root)}, size=(8, 8))
    ds = load_dataset(spec, log=Log())
    path = save_split(ds, tmp_path / "split.json")
    gone = ds.file_ids()[ds.splits["test"][0]]
    os.unlink(root / gone)
    decoded = []
    with pytest.raises(DataError, match=f"1 files of the saved split are not in the data: {gone}"):
        load_dataset(spec, split_file=path, log=Log(), progress=lambda done, total: decoded.append(done))
    assert decoded == []  # refused from the listing, before any image decoded
    with pytest.raises(DataError, match="split file not found"):
        load_dataset(spec, split_file=tmp_path / "none.json", log=Log())
    # files added since the split was saved are named, not only counted
    shutil.copy(root / ds.file_ids()[0], root / ds.file_ids()[0].replace(".png", "-new.png"))
    os.unlink(path)
    ds = load_dataset(spec, log=Log())
    path = save_split(ds, tmp_path / "split.json")
    added = root / ds.file_ids()[1].replace(".png", "-added.png")
    shutil.copy(root / ds.file_ids()[1], added)
    log = Log()
    load_dataset(spec, split_file=path, log=log)
    name = added.relative_to(root).as_posix()
    assert any(m.startswith("warning: 1 images of the data are not in") and m.endswith(name) for m in log), list(log)
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(DataError, match="not a convspec split file"):
        read_split(tmp_path / "bad.json")


def test_an_edited_split_with_a_file_in_two_splits_is_refused(tmp_path, digits_folder):
    """A test image copied into train would inflate the test score without a word: refused by name."""
    spec = make_spec({"type": "folder", "path": str(digits_folder)}, size=(8, 8))
    path = save_split(load_dataset(spec, log=Log()), tmp_path / "split.json")
    doc = json.loads(path.read_text())
    test = doc["splits"]["test"]
    doc["splits"]["train"]["files"].append(test["files"][0])
    doc["splits"]["train"]["labels"].append(test["labels"][0])
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"1 files are listed twice .*: {test['files'][0]} \(train and test\)"):
        load_dataset(spec, split_file=path, log=Log())


def test_split_from_folders(tmp_path, shapes_folder):
    for split, ks in (("train", range(0, 8)), ("val", range(8, 10)), ("test", range(10, 12))):
        for shape in ("circle", "square"):
            (tmp_path / split / shape).mkdir(parents=True)
            for k in ks:
                shutil.copy(shapes_folder / shape / f"{k:02d}.png", tmp_path / split / shape)
    spec = make_spec({"type": "folder", "path": str(tmp_path)}, split={"from": "folders"})
    ds = load_dataset(spec, log=Log())
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 16, "val": 4, "test": 4}
    assert all(ds.file_ids()[i].startswith("val/") for i in ds.splits["val"])
    assert ds.counts()["test"] == {"circle": 2, "square": 2}
    # a split folder's class of unreadable files: the test split had no circles, scored 100 %
    for f in (tmp_path / "test" / "circle").iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=r"every image of class circle in test/ failed to load"):
        load_dataset(spec, log=Log())
    from convspec.specs import SpecError, load_spec_text

    text = (
        f"version: 1\ntask: binary\ndata:\n  source: {{type: folder, path: {tmp_path}}}\n  split: {{from: folders}}\n"
        "input: {channels: 1, size: [8, 8]}\nmodel:\n  layers: [{type: flatten}]\n"
    )
    with pytest.raises(SpecError, match=r"class folder without images in .*test: circle"):
        load_spec_text(text)  # validate says so too


# ------------------------------------------------------------------- cache


def test_disk_cache_second_load_is_a_memmap(tmp_path, dirty_shapes):
    spec = make_spec({"type": "folder", "path": str(dirty_shapes)}, channels=3, size=(20, 20), cache="disk")
    first = load_dataset(spec, cache_dir=tmp_path / "cache", log=Log())
    log = Log()
    second = load_dataset(spec, cache_dir=tmp_path / "cache", log=log)
    assert isinstance(second.images, np.memmap)
    assert any("from the disk cache" in m for m in log)
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert second.bad_files == first.bad_files and len(second.bad_files) == 5
    assert second.files == first.files and np.array_equal(second.labels, first.labels)
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 1
    # a changed file misses the cache
    path = dirty_shapes / "circle" / "00.png"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    log = Log()
    load_dataset(spec, cache_dir=tmp_path / "cache", log=log)
    assert not any("from the disk cache" in m for m in log)
    with pytest.raises(ImageError):  # a cached bad file still raises under on_bad_image: error
        load_dataset(
            make_spec(
                {"type": "folder", "path": str(dirty_shapes)},
                channels=3,
                size=(20, 20),
                cache="disk",
                on_bad_image="error",
            ),
            cache_dir=tmp_path / "cache",
            log=Log(),
        )


def test_a_new_disk_entry_says_what_the_stale_ones_hold(tmp_path, shapes_folder, monkeypatch):
    from collections import namedtuple

    from convspec.compiler.data import decoding

    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    spec = make_spec({"type": "folder", "path": str(data)}, channels=3, size=(16, 16), cache="disk")
    log = Log()
    load_dataset(spec, cache_dir=tmp_path / "cache", log=log)
    assert not any("other cached data sets" in m for m in log)  # the first entry: nothing else there
    entry = next((tmp_path / "cache" / "images").glob("*.npy"))
    os.utime(data / "circle" / "00.png", ns=(time.time_ns(), time.time_ns() + 10**9))  # an edited data set
    log = Log()
    load_dataset(spec, cache_dir=tmp_path / "cache", log=log)
    gib = f"{entry.stat().st_size / 2**30:.2f} GiB"
    assert any(f"1 other cached data sets there hold {gib}" in m for m in log), list(log)
    # a disk too full for a third entry: the warning points at the stale ones
    os.utime(data / "circle" / "01.png", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(decoding.shutil, "disk_usage", lambda _p: usage(1 << 30, 1 << 30, 0))
    log = Log()
    ds = load_dataset(spec, cache_dir=tmp_path / "cache", log=log)
    (warning,) = log.warnings()
    assert warning.startswith("warning: not enough free space") and "2 other cached data sets" in warning, warning
    assert isinstance(ds.images, np.ndarray) and not isinstance(ds.images, np.memmap)


def test_a_killed_decodes_temp_file_is_removed_and_a_running_ones_kept(tmp_path, shapes_folder):
    """SIGKILL during a disk-cache decode (the OOM killer) left a data-set-sized ``.full.tmp`` that
    no run removed or counted. A decode holds an flock on its own; a file nobody holds is removed."""
    import fcntl

    spec = make_spec({"type": "folder", "path": str(shapes_folder)}, channels=3, size=(16, 16), cache="disk")
    folder = tmp_path / "cache" / "images"
    folder.mkdir(parents=True)
    killed, running = folder / ".0123abcd.x1y2.full.tmp", folder / ".4567ef01.z3w4.full.tmp"
    killed.write_bytes(b"\0" * 4096)
    running.write_bytes(b"\0" * 4096)
    fifo = folder / ".fifo.full.tmp"
    os.mkfifo(fifo)  # anyone who can write the cache can put one there: it must not hang the run
    with open(running, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another process's decode, in progress
        log = Log()
        load_dataset(spec, cache_dir=tmp_path / "cache", log=log)
    assert not killed.exists() and running.exists() and fifo.exists()
    assert any(m.startswith(f"data: removed 1 temp file(s) of killed decodes from {folder}") for m in log), list(log)
    # the entry has the mode any new file gets (umask), not mkstemp's 0600: a shared cache stays readable
    umask = os.umask(0)
    os.umask(umask)
    (entry,) = folder.glob("*.npy")
    assert entry.stat().st_mode & 0o777 == 0o666 & ~umask


def test_split_rows_read_what_is_indexed_and_match_the_split_copy(tmp_path, shapes_folder):
    spec = make_spec({"type": "folder", "path": str(shapes_folder)}, channels=3, size=(16, 16), cache="disk")
    ds = load_dataset(spec, cache_dir=tmp_path / "cache", log=Log())
    images, _ = ds.arrays("test")
    rows = ds.rows("test")
    assert len(rows) == len(images) and rows.shape == images.shape
    assert np.array_equal(rows[3], images[3]) and np.array_equal(rows[-1], images[-1])
    assert np.array_equal(rows[1:4], images[1:4]) and np.array_equal(rows[:], images)
    assert np.shares_memory(rows[3], ds.images)  # one image: a view of the memmap, not a copy


def test_memory_cache_decodes_once_per_process(shapes_folder):
    spec = make_spec({"type": "folder", "path": str(shapes_folder)}, size=(12, 12), cache="memory")
    first = load_dataset(spec, log=Log())
    log = Log()
    second = load_dataset(spec, log=log)
    assert any("from memory" in m for m in log)
    assert second.images is first.images and not second.images.flags.writeable


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVSPEC_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CONVSPEC_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "convspec")


def test_arrays_are_writable_copies():
    ds = load_dataset(make_spec({**DIGITS, "classes": [0, 1]}, size=(8, 8)), log=Log())
    x, y = ds.arrays("val")
    assert x.shape == (len(ds.splits["val"]), 1, 8, 8) and x.flags.writeable
    assert np.array_equal(y, ds.labels[ds.splits["val"]])


def _twelve_bit_folder(root, peak=4095):
    for k, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), (peak // 2) * k + i, np.uint16)).save(root / name / f"{i}.png")
    return root


def test_bits_stored_is_used_and_keyed_in_the_cache(tmp_path):
    root = _twelve_bit_folder(tmp_path / "xray")
    source = {"type": "folder", "path": str(root)}
    full = load_dataset(make_spec(source, size=(8, 8), cache="disk"), cache_dir=tmp_path / "c", log=Log())
    log = Log()
    twelve = load_dataset(
        make_spec(source, size=(8, 8), cache="disk", bits_stored=12), cache_dir=tmp_path / "c", log=log
    )
    assert not any("from the disk cache" in m for m in log)  # another bits_stored: another cache entry
    light = twelve.labels == 1
    assert np.asarray(twelve.images)[light].max() == 128 and np.asarray(full.images)[light].max() == 8
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 2


def test_a_warning_when_16_bit_images_do_not_fit_bits_stored(tmp_path):
    source = {"type": "folder", "path": str(_twelve_bit_folder(tmp_path / "xray", peak=4095))}
    log = Log()
    load_dataset(make_spec(source, size=(8, 8)), log=log)
    (message,) = [m for m in log.warnings() if "16-bit" in m]
    assert "hold values up to 2050 (12 bits, in 8 sampled)" in message and "set input.bits_stored: 12" in message
    log = Log()
    load_dataset(make_spec(source, size=(8, 8), bits_stored=12), log=log)
    assert not [m for m in log.warnings() if "16-bit" in m], log
    log = Log()
    load_dataset(make_spec(source, size=(8, 8), bits_stored=10), log=log)
    (message,) = [m for m in log.warnings() if "16-bit" in m]
    assert "input.bits_stored is 10" in message and "values above 1023 become white" in message
    full = {"type": "folder", "path": str(_twelve_bit_folder(tmp_path / "photo", peak=65535))}
    log = Log()
    load_dataset(make_spec(full, size=(8, 8)), log=log)
    assert not [m for m in log.warnings() if "16-bit" in m], log


def _png16_rgb(path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow writes none): IHDR bit depth 16, colour type 2, rows unfiltered."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = values.shape
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _ramp(low: float, high: float) -> np.ndarray:
    return np.linspace(low, high, 64).reshape(8, 8)


@pytest.mark.parametrize(
    ("make", "bits", "expected"),
    [
        # signed CT (Hounsfield units): below 0 became black, and bits_stored was no cure
        (
            lambda: Image.fromarray(_ramp(-1024, 3071).astype(np.int32), mode="I"),
            12,
            "hold negative values (down to -1024",
        ),
        # a scanner's 1000..1400 window among full-range images: 2 grey levels, unseen
        (lambda: Image.fromarray(_ramp(1000, 1400).astype(np.uint16)), 16, "use a narrow window of values"),
        # float images up to 65535 became white
        (lambda: Image.fromarray(_ramp(0, 65535).astype(np.float32), mode="F"), 16, "hold values above 255"),
    ],
)
def test_sampled_images_that_will_not_become_the_pixels_meant_are_named(tmp_path, make, bits, expected):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            image = make() if i % 2 else Image.fromarray(_ramp(0, 65535 if bits == 16 else 4095).astype(np.uint16))
            image.save(tmp_path / "data" / name / f"{i}.tif")
    log = Log()
    load_dataset(make_spec({"type": "folder", "path": str(tmp_path / "data")}, size=(8, 8), bits_stored=bits), log=log)
    assert any(expected in m for m in log.warnings()), log


def test_float_images_read_on_two_scales_are_named_and_a_filter_overshoot_is_not_black(tmp_path):
    """One pixel at 1.0001 read a whole 0..1 image as 0..255: black."""
    from convspec.runtime import load_image

    unit = _ramp(0, 1).astype(np.float32)
    unit[0, 0] = 1.0001
    Image.fromarray(unit, mode="F").save(tmp_path / "overshoot.tif")
    pixels = load_image(tmp_path / "overshoot.tif", 1, (8, 8))
    assert pixels.max() == 255 and pixels.mean() > 100
    unit[0, 0] = np.inf  # one +inf pixel read the image on 0..255 too
    Image.fromarray(unit, mode="F").save(tmp_path / "inf.tif")
    assert np.array_equal(load_image(tmp_path / "inf.tif", 1, (8, 8)), pixels)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            scale = 255.0 if i % 2 else 1.0
            Image.fromarray((_ramp(0, 1) * scale).astype(np.float32), mode="F").save(
                tmp_path / "data" / name / f"{i}.tif"
            )
    log = Log()
    load_dataset(make_spec({"type": "folder", "path": str(tmp_path / "data")}, size=(8, 8)), log=log)
    (message,) = [m for m in log.warnings() if "float images" in m]
    assert "of 8 sampled, 4 are on 0..1 and 4 not" in message and "store every image on one scale" in message


def test_bits_stored_for_16_bit_colour_says_pillow_reads_it_at_8_bits(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            _png16_rgb(tmp_path / "data" / name / f"{i}.png", np.repeat(_ramp(0, 4095)[..., None], 3, axis=2))
    log = Log()
    spec = make_spec({"type": "folder", "path": str(tmp_path / "data")}, size=(8, 8), bits_stored=12)
    ds = load_dataset(spec, log=log)
    assert np.asarray(ds.images).max() == 15  # the high byte of 4095: what the message says
    (message,) = [m for m in log.warnings() if "16-bit colour" in m]
    assert "input.bits_stored: 12 applies to 16-bit grey images" in message and "keep 16 grey levels" in message
