"""Data that cannot be used, through ``convspec train`` (and ``load_dataset``): exit 1, the folder,
class or file named, no traceback, no checkpoint written.
"""

from __future__ import annotations

import os

import pytest

from convspec.compiler.data.loading import load_dataset
from convspec.runtime.datasets import DataError
from convspec.specs import load_spec

from .conftest import cli, image_folder, save_png, tiny_spec, user_error, write


def folder_spec(tmp_path, path="data", **kw):
    return write(tmp_path / "spec.yaml", tiny_spec(f"{{type: folder, path: {path}}}", **kw))


def csv_spec(tmp_path, csv="labels.csv", **kw):
    return write(tmp_path / "spec.yaml", tiny_spec(f"{{type: csv, path: {csv}}}", **kw))


def labelled_csv(tmp_path, rows: list[tuple[str, str]], header="path,label") -> None:
    for path, label in rows:
        save_png(tmp_path / path, 60 if label == "a" else 180)
    write(tmp_path / "labels.csv", header + "\n" + "".join(f"{p},{lab}\n" for p, lab in rows))


def setup_missing_folder(tmp_path):
    return folder_spec(tmp_path, path="nowhere"), ["data.source.path", "folder not found", "nowhere"]


def setup_path_is_a_file(tmp_path):
    write(tmp_path / "data", "not a folder")
    return folder_spec(tmp_path), ["data.source.path", "not a folder"]


def setup_empty_class_folder(tmp_path):
    image_folder(tmp_path / "data", ("a", "b"))
    (tmp_path / "data" / "c").mkdir()
    return folder_spec(tmp_path), ["class folder without images", ": c"]


def setup_one_class(tmp_path):
    image_folder(tmp_path / "data", ("only",))
    return folder_spec(tmp_path), ["only one class folder (only)", "at least 2 classes"]


def setup_no_class_folders(tmp_path):
    for i in range(3):
        save_png(tmp_path / "data" / f"{i}.png")
    return folder_spec(tmp_path), ["no class folders", "holds 3 images directly"]


def setup_symlink_loop_only(tmp_path):
    image_folder(tmp_path / "data", ("b", "c"))
    (tmp_path / "data" / "a").mkdir()
    os.symlink("..", tmp_path / "data" / "a" / "up")
    return folder_spec(tmp_path), ["class folder without images", ": a"]


def setup_class_all_unreadable(tmp_path):
    image_folder(tmp_path / "data", ("a", "b"))
    for i in range(4):
        write(tmp_path / "data" / "b" / f"{i}.png", b"not an image")
    return folder_spec(tmp_path), ["every image of class b failed to load"]


def setup_bad_image_with_on_bad_image_error(tmp_path):
    import numpy as np
    from PIL import Image

    image_folder(tmp_path / "data", ("a", "b"))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "data" / "b" / "2.png")
    data = (tmp_path / "data" / "b" / "2.png").read_bytes()
    write(tmp_path / "data" / "b" / "2.png", data[: len(data) // 2])  # cut inside the pixel data
    spec = folder_spec(tmp_path, data_extra="  on_bad_image: error\n")
    return spec, [os.path.join("b", "2.png"), "truncated"]


def setup_broken_link_with_on_bad_image_error(tmp_path):
    image_folder(tmp_path / "data", ("a", "b"))
    os.symlink(tmp_path / "gone.png", tmp_path / "data" / "a" / "9.png")
    return folder_spec(tmp_path, data_extra="  on_bad_image: error\n"), ["9.png", "broken link"]


def setup_binary_with_three_classes(tmp_path):
    image_folder(tmp_path / "data", ("a", "b", "c"))
    return folder_spec(tmp_path, task="binary"), ["binary", "2 classes", "3"]


def setup_class_count_mismatch(tmp_path):
    image_folder(tmp_path / "data", ("a", "b"))
    return folder_spec(tmp_path, classes="3"), ["classes", "3", "2"]


def setup_too_few_images_to_split(tmp_path):
    image_folder(tmp_path / "data", ("a", "b"), per_class=1)
    return folder_spec(tmp_path), ["data.split", "too few"]


def setup_split_folders_without_val(tmp_path):
    image_folder(tmp_path / "data" / "train", ("a", "b"))
    return folder_spec(tmp_path, split="{from: folders}"), ["val/", "split from: folders"]


def setup_csv_label_not_in_classes(tmp_path):
    labelled_csv(tmp_path, [(f"img/{i}{c}.png", c) for c in "ab" for i in range(3)])
    return csv_spec(tmp_path, classes="[a, zebra]"), [
        "classes",
        "in the data but not listed: b",
        "not in the data: zebra",
    ]


def setup_csv_missing(tmp_path):
    return csv_spec(tmp_path), ["data.source.path", "CSV file not found", "labels.csv"]


def setup_csv_lists_missing_files(tmp_path):
    labelled_csv(tmp_path, [(f"img/{i}{c}.png", c) for c in "ab" for i in range(3)])
    with open(tmp_path / "labels.csv", "a") as f:
        f.write("img/ghost.png,a\n")
    return csv_spec(tmp_path), ["1 files listed in labels.csv do not exist", "ghost.png"]


def setup_csv_wrong_columns(tmp_path):
    labelled_csv(tmp_path, [(f"img/{i}{c}.png", c) for c in "ab" for i in range(3)], header="file,class")
    return csv_spec(tmp_path), ["labels.csv:1", "columns must be path,label"]


def setup_csv_not_utf8(tmp_path):
    labelled_csv(tmp_path, [(f"img/{i}{c}.png", c) for c in "ab" for i in range(3)])
    with open(tmp_path / "labels.csv", "ab") as f:
        f.write(b"img/caf\xe9.png,a\n")
    return csv_spec(tmp_path), ["labels.csv", "not UTF-8"]


SETUPS = {name[len("setup_") :].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("setup_")}


@pytest.mark.parametrize("name", list(SETUPS))
def test_bad_data_is_a_clean_error(name, tmp_path):
    spec, words = SETUPS[name](tmp_path)
    result = cli("train", spec, "--out", tmp_path / "runs", "--no-export")
    user_error(result, *words, max_lines=6)
    assert not list((tmp_path / "runs").rglob("*.pt")) if (tmp_path / "runs").exists() else True


def test_symlink_loop_is_skipped_and_never_relabels_images(tmp_path):
    """``a/up -> ..`` must not make b's images a second time, as class a: skipped, with a warning naming it."""
    image_folder(tmp_path / "data", ("a", "b"))
    os.symlink("..", tmp_path / "data" / "a" / "up")
    image_folder(tmp_path / "more", ("b",))
    os.symlink(tmp_path / "more" / "b", tmp_path / "data" / "a" / "sideways")  # a link elsewhere is data, not a loop
    spec = load_spec(folder_spec(tmp_path))
    messages: list[str] = []
    data = load_dataset(spec, log=messages.append)
    files = sorted(os.path.relpath(f, tmp_path / "data") for f in data.files)
    assert len(files) == 12 and sum(f.startswith(os.path.join("a", "up")) for f in files) == 0
    assert any("symbolic link loop" in m and os.path.join("a", "up") in m for m in messages)
    assert all(not m.startswith("warning: warning:") for m in messages)


def test_data_errors_are_convspec_errors_from_the_python_api(tmp_path):
    from convspec.specs import ConvspecError

    spec = load_spec(folder_spec(tmp_path, path="nowhere"))
    with pytest.raises(DataError, match="folder not found") as info:
        load_dataset(spec, log=lambda _m: None)
    assert isinstance(info.value, ConvspecError)


def test_a_file_name_that_is_not_utf8_trains_and_its_split_reads_back(tmp_path):
    """Such a name reaches Python as a lone surrogate, which split.json's UTF-8 once could not encode."""
    import json

    from convspec.compiler.data.split import read_split
    from convspec.compiler.training.loop import train

    data = image_folder(tmp_path / "data", per_class=6)
    odd = os.path.join(os.fsencode(data / "a"), b"bad\xffname.png")
    os.rename(os.fsencode(data / "a" / "0.png"), odd)
    spec = write(tmp_path / "s.yaml", tiny_spec(f"{{type: folder, path: {data}}}"))
    run = train(spec, out=tmp_path / "runs", export=False, progress=False, log=lambda _m: None).path
    text = (run / "split.json").read_text("utf-8")  # still UTF-8: the odd byte is a JSON escape
    json.loads(text)
    files = [f for part in read_split(run / "split.json")["splits"].values() for f in part["files"]]
    assert os.fsdecode(b"a/bad\xffname.png") in files
    assert any(os.path.exists(data / f) for f in files if "bad" in f)


def test_a_class_folder_whose_name_is_not_utf8_is_refused_by_name(tmp_path):
    data = image_folder(tmp_path / "data")
    os.rename(os.fsencode(data / "b"), os.path.join(os.fsencode(data), b"b\xff"))
    spec = write(tmp_path / "s.yaml", tiny_spec(f"{{type: folder, path: {data}}}"))
    user_error(cli("train", spec, "--out", tmp_path / "runs"), "is not UTF-8 text", "rename the class folder")
    assert not (tmp_path / "runs").exists()
