"""Listing labelled images without decoding: ImageFolder trees, CSV files, train/val/test folders."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from convspec.runtime.datasets import (
    DataError,
    list_csv,
    list_folder,
    list_images,
    list_split_folders,
)
from convspec.specs import ConvspecError


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)
    return path


def _tree(root, layout: dict[str, int]):
    for name, n in layout.items():
        for i in range(n):
            _png(root / name / f"{i}.png", i)
    return root


# ------------------------------------------------------------------ folder


def test_list_folder_shapes(shapes_folder):
    samples, names = list_folder(str(shapes_folder))
    assert names == ["circle", "square", "triangle"]
    assert len(samples) == 36
    assert [label for _, label in samples] == [0] * 12 + [1] * 12 + [2] * 12
    assert samples[0][0] == os.path.join(str(shapes_folder), "circle", "00.png")
    assert [p for p, _ in samples[:12]] == sorted(p for p, _ in samples[:12])


def test_numeric_class_names_sort_numerically(tmp_path):
    _, names = list_folder(str(_tree(tmp_path, {"10": 1, "2": 1, "b": 1, "a": 1})))
    assert names == ["2", "10", "a", "b"]


def test_nested_hidden_and_non_image_files(tmp_path):
    _tree(tmp_path, {"cat": 1, "dog": 1})
    _png(tmp_path / "cat" / "sub" / "deep" / "x.PNG")
    _png(tmp_path / "cat" / ".hidden.png")
    _png(tmp_path / ".cache" / "1.png")  # hidden folder: not a class
    _png(tmp_path / "dog" / ".thumbs" / "t.png")
    (tmp_path / "dog" / "notes.txt").write_text("x")
    (tmp_path / "dog" / "broken.jpg").write_text("x")  # an image name: kept, fails when decoded
    with pytest.warns(UserWarning) as caught:
        samples, names = list_folder(str(tmp_path))
    said = [str(w.message) for w in caught]
    assert any("dog: 1 file(s) skipped, not images by their extension" in m and "notes.txt" in m for m in said)
    assert any(".cache: skipped, a hidden folder" in m for m in said), said
    rel = sorted(os.path.relpath(p, tmp_path) for p, _ in samples)
    assert names == ["cat", "dog"]
    assert rel == sorted(["cat/0.png", "cat/sub/deep/x.PNG", "dog/0.png", "dog/broken.jpg"])


def test_symlink_loop_does_not_hang(tmp_path):
    _tree(tmp_path, {"cat": 2, "dog": 1})
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "loop")  # cat/loop -> cat
    _tree(tmp_path / ".elsewhere", {"dog": 1})  # hidden: not a class
    os.symlink(tmp_path / "nowhere.png", tmp_path / ".elsewhere" / "dog" / "dangling.png")
    os.symlink(tmp_path / ".elsewhere" / "dog", tmp_path / "cat" / "also_dog")  # not a loop: followed
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dog" / "dangling.png")
    result, messages = {}, []
    t = threading.Thread(target=lambda: result.update(r=list_folder(str(tmp_path), log=messages.append)))
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "list_folder hangs on a symlink loop"
    samples, names = result["r"]
    rel = sorted(os.path.relpath(p, tmp_path) for p, _ in samples)
    assert rel == [
        "cat/0.png",
        "cat/1.png",
        "cat/also_dog/0.png",
        "cat/also_dog/dangling.png",
        "dog/0.png",
        "dog/dangling.png",
    ]
    assert any("symbolic link loop" in m and "loop" in m for m in messages)


def test_list_images_warns_by_default(tmp_path):
    _png(tmp_path / "a.png")
    os.symlink(tmp_path, tmp_path / "self")
    with pytest.warns(UserWarning, match="symbolic link loop"):
        assert list_images(str(tmp_path)) == [str(tmp_path / "a.png")]


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "data.source.path: folder not found: "),
        ("file", "data.source.path: not a folder: "),
        ("no_classes", "no class folders in "),
        ("loose", "it holds 1 images directly"),
        ("empty", "class folders without images in "),
        ("single", r"only one class folder \(cat\)"),
    ],
)
def test_list_folder_errors(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case in ("no_classes", "loose"):
        root.mkdir()
        if case == "loose":
            _png(root / "1.png")
    elif case == "empty":
        _tree(root, {"cat": 1, "dog": 0, "emu": 0})
        (root / "dog").mkdir()
        (root / "emu").mkdir()
        (root / "emu" / "readme.txt").write_text("x")
    elif case == "single":
        _tree(root, {"cat": 2})
    with pytest.raises(DataError, match=message) as e:
        list_folder(str(root), log=lambda _m: None)
    assert isinstance(e.value, ConvspecError)
    if case == "empty":
        assert "dog, emu" in str(e.value)


def test_single_class_allowed_when_asked(tmp_path):
    samples, names = list_folder(str(_tree(tmp_path, {"cat": 2})), min_classes=1)
    assert names == ["cat"] and len(samples) == 2


# --------------------------------------------------------------------- csv


def _csv(tmp_path, text, name="labels.csv"):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path / name)


def test_list_csv(tmp_path):
    _tree(tmp_path / "img", {"a": 2, "b": 1})
    path = _csv(tmp_path, "\ufeffpath,label\nimg/a/0.png,cat\nimg/b/0.png, dog \n\nimg/a/1.png,cat\n")
    samples, names = list_csv(path)
    assert names == ["cat", "dog"]
    assert samples == [
        (str(tmp_path / "img/a/0.png"), 0),
        (str(tmp_path / "img/b/0.png"), 1),
        (str(tmp_path / "img/a/1.png"), 0),
    ]
    # label,path order and a root folder
    other = _csv(tmp_path, "label,path\ncat,a/0.png\ndog,b/0.png\n", "other.csv")
    samples, _ = list_csv(other, root=str(tmp_path / "img"))
    assert samples[1] == (str(tmp_path / "img/b/0.png"), 1)


@pytest.mark.parametrize(
    "text,message",
    [
        ("img/a/0.png,cat\nimg/a/1.png,dog\n", "labels.csv:1: no header row; the first line must be path,label"),
        (
            "path,label,split\nimg/a/0.png,cat,train\n",
            r"labels.csv:1: columns must be path,label \(unknown: split; found: path, label, split\)",
        ),
        ("file,label\nimg/a/0.png,cat\n", r"unknown: file; missing: path"),
        ("path,label\nimg/a/0.png,\nimg/a/1.png,cat\n", "labels.csv:2: empty label for img/a/0.png"),
        ("path,label\nimg/a/0.png,cat,x\n", "labels.csv:2: expected 2 fields"),
        ("path,label\nimg/a/0.png,cat\nimg/a/0.png,dog\n", "labels.csv:3: img/a/0.png is listed twice"),
        (
            "path,label\nimg/a/0.png,cat\nimg/zz.png,dog\nimg/yy.png,dog\n",
            "2 files listed in labels.csv do not exist .*img/zz.png, img/yy.png",
        ),
        ("path,label\nimg/a/0.png,cat\nimg/a/1.png,cat\n", "has only one label \\(cat\\)"),
        ("", "is empty"),
    ],
)
def test_list_csv_errors(tmp_path, text, message):
    _tree(tmp_path / "img", {"a": 2})
    with pytest.raises(DataError, match=message):
        list_csv(_csv(tmp_path, text))


def test_list_csv_missing_file_and_root(tmp_path):
    with pytest.raises(DataError, match="data.source.path: CSV file not found"):
        list_csv(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="data.source.root: folder not found"):
        list_csv(_csv(tmp_path, "path,label\n"), root=str(tmp_path / "nowhere"))


# ------------------------------------------------------------ split folders


def test_a_file_reached_twice_through_links_is_used_once_and_never_under_two_labels(tmp_path):
    """A link into another class gave one image two labels, and a link between split folders put
    a training image into the test split; a second link within a class counted an image twice."""
    _tree(tmp_path / "data", {"cat": 3, "dog": 3})
    data = tmp_path / "data"
    (data / "cat" / "sub").mkdir()
    os.symlink("../0.png", data / "cat" / "sub" / "again.png")  # the same class: used once
    messages: list[str] = []
    samples, _ = list_folder(str(data), log=messages.append)
    assert len(samples) == 6 and str(data / "cat" / "sub" / "again.png") not in [p for p, _ in samples]
    assert any("1 image file is reached twice through symbolic links" in m and "again.png" in m for m in messages)

    os.symlink("../cat", data / "dog" / "alias")  # every cat image again, as a dog
    with pytest.raises(
        DataError, match=r"4 image files are reached through symbolic links in two places: .*alias/0.png is"
    ):
        list_folder(str(data))
    os.unlink(data / "dog" / "alias")
    os.symlink(data / "dog", data / "emu")  # a class folder that is a link to another
    with pytest.raises(DataError, match=r"emu/0.png is .*dog/0.png \(in class dog\)"):
        list_folder(str(data))

    for split in ("train", "val"):
        _tree(tmp_path / "split" / split, {"cat": 2, "dog": 2})
    os.symlink(tmp_path / "split" / "train", tmp_path / "split" / "test")  # test/ -> train/
    with pytest.raises(DataError, match=r"test/cat/0.png is .*train/cat/0.png \(in train/\)"):
        list_split_folders(str(tmp_path / "split"))


def test_list_split_folders(tmp_path):
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        _tree(tmp_path / split, {"cat": n, "dog": n})
    per, names = list_split_folders(str(tmp_path))
    assert names == ["cat", "dog"]
    assert {s: len(v) for s, v in per.items()} == {"train": 6, "val": 4, "test": 2}
    shutil.rmtree(tmp_path / "test")
    per, _ = list_split_folders(str(tmp_path))
    assert per["test"] == []


def test_list_split_folders_errors(tmp_path):
    _tree(tmp_path / "train", {"cat": 1, "dog": 1})
    _tree(tmp_path / "valid", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match=r"needs val/ in .* \(found: train, valid\)"):
        list_split_folders(str(tmp_path))
    _tree(tmp_path / "val", {"cat": 1, "emu": 1})
    with pytest.raises(
        DataError,
        match=r"val/ and train/ must have the same class folders \(not in train/: emu; missing from val/: dog\)",
    ):
        list_split_folders(str(tmp_path))


def test_files_that_are_not_images_are_skipped_by_name_not_silently(tmp_path):
    """SPEC.md: anything else is reported by path, never silently used (a PNG named .dat included)."""
    from PIL import Image

    from convspec.runtime.datasets import list_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("L", (4, 4), 40 * i).save(tmp_path / c / f"{i}.png")
    Image.new("L", (4, 4)).save(tmp_path / "a" / "x.dat", format="PNG")
    (tmp_path / "b" / "notes.txt").write_text("a note")
    lines: list[str] = []
    samples, classes = list_folder(str(tmp_path), log=lines.append)
    assert len(samples) == 6 and classes == ["a", "b"]
    assert any("1 file(s) skipped, not images by their extension" in ln and "x.dat" in ln for ln in lines), lines
    assert any("notes.txt" in ln for ln in lines), lines


def test_one_bad_csv_row_is_one_line_naming_the_csv_once(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text("path,label\na.png,x\na.png,x\nb.png,y\n")
    with pytest.raises(DataError) as info:
        list_csv(str(csv_path), key=str(csv_path), min_classes=1)
    assert str(info.value) == f"{csv_path}: dup.csv:3: a.png is listed twice (first on line 2)"


def test_a_csv_row_naming_a_file_listed_before_under_another_name_is_refused(tmp_path):
    """The same file through a link carried labels a and b, one image in train and in test."""
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    os.symlink("a.png", tmp_path / "alias.png")
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb.png,y\nalias.png,y\n")
    with pytest.raises(DataError, match=r"1 rows of .* name a file listed before under another name:\n  labels.csv:4: "
                       r"alias.png is a.png of line 2 \(a link\)"):  # fmt: skip
        list_csv(str(tmp_path / "labels.csv"))
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb.png,y\n")
    assert len(list_csv(str(tmp_path / "labels.csv"))[0]) == 2


def test_one_class_name_in_two_unicode_forms_is_refused(tmp_path):
    """ "café" as NFC and as NFD (macOS) trained two classes that print alike."""
    import unicodedata

    for form in ("NFC", "NFD"):
        _png(tmp_path / unicodedata.normalize(form, "café") / "0.png")
    _png(tmp_path / "tea" / "0.png")
    with pytest.raises(DataError, match="are one name in two Unicode forms"):
        list_folder(str(tmp_path))


def test_a_hidden_folder_of_images_and_a_broken_class_link_are_named_when_skipped(tmp_path):
    """Both vanished without a word: a class fewer, and no reason given."""
    _tree(tmp_path, {"cat": 1, "dog": 1, ".eel": 1, ".git": 0})
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    os.symlink(tmp_path / "nowhere", tmp_path / "fox")
    messages: list[str] = []
    _, classes = list_folder(str(tmp_path), log=messages.append)
    assert classes == ["cat", "dog"]
    assert any(".eel: skipped, a hidden folder" in m for m in messages), messages
    assert any("fox: skipped, a broken link" in m for m in messages), messages
    assert not any(".git" in m for m in messages)  # no images in it: no news


def test_a_split_folder_class_in_another_unicode_form_says_so(tmp_path):
    import unicodedata

    _tree(tmp_path / "train", {"café": 1, "tea": 1})
    _tree(tmp_path / "val", {unicodedata.normalize("NFD", "café"): 1, "tea": 1})
    with pytest.raises(DataError, match="one name in two Unicode forms"):
        list_split_folders(str(tmp_path))
