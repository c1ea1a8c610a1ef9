"""Hangs and unbounded reads: a FIFO, ``/dev/zero``, ``/dev/urandom`` or a folder in any file position.

Every command ends within 5 s with one line that names the file and says what it is
(``is a FIFO (named pipe), not a regular file``), exit 1, and writes nothing. The root is one
reader, :mod:`convspec.specs.readfile`, used for every file convspec reads.
"""

from __future__ import annotations

import os
import time

import pytest

from convspec.runtime.datasets import DataError, list_csv, list_images
from convspec.specs import readfile
from convspec.specs.readfile import FileReadError, read_bytes, read_json, read_text

from .conftest import cli, image_folder, probe_model, tiny_spec, user_error, write

pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of stopping the suite

WHAT = {
    "fifo": "is a FIFO (named pipe), not a regular file",
    "zero": "is a device, not a regular file",
    "urandom": "is a device, not a regular file",
}


@pytest.fixture
def hostile(tmp_path):
    """name -> path: a FIFO nobody writes to, /dev/zero, /dev/urandom."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    return {"fifo": str(fifo), "zero": "/dev/zero", "urandom": "/dev/urandom"}


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory):
    """Import what train imports once, so that the 5 s below time the command, not torch's import."""
    cli("train", tmp_path_factory.mktemp("warm") / "nope.yaml")


def quick(*args, cwd=None):
    start = time.monotonic()
    result = cli(*args, cwd=cwd)
    assert time.monotonic() - start <= 5, f"took {time.monotonic() - start:.1f} s"
    return result


def nothing_written(folder):
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("kind", sorted(WHAT))
@pytest.mark.parametrize("command", ["validate", "summary", "train"])
def test_spec_file_that_is_not_a_regular_file(tmp_path, hostile, kind, command):
    args = [command, hostile[kind]] + (["--out", tmp_path / "runs"] if command == "train" else [])
    user_error(quick(*args), hostile[kind], WHAT[kind])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", sorted(WHAT))
@pytest.mark.parametrize("command", ["validate", "summary"])
def test_csv_source_that_is_not_a_regular_file(tmp_path, hostile, kind, command):
    spec = write(tmp_path / "spec.yaml", tiny_spec(f"{{type: csv, path: {hostile[kind]}}}"))
    stderr = user_error(quick(command, spec), "data.source.path", hostile[kind], WHAT[kind])
    assert "does not exist" not in stderr and "not found" not in stderr


@pytest.mark.parametrize("kind", sorted(WHAT))
def test_csv_source_through_train_is_refused_before_training(tmp_path, hostile, kind):
    spec = write(tmp_path / "spec.yaml", tiny_spec(f"{{type: csv, path: {hostile[kind]}}}"))
    user_error(quick("train", spec, "--out", tmp_path / "runs"), hostile[kind], WHAT[kind])
    assert not list((tmp_path / "runs").glob("*/last.pt"))


@pytest.mark.parametrize("kind", sorted(WHAT))
def test_model_file_that_is_not_a_regular_file(tmp_path, hostile, kind):
    image_folder(tmp_path / "data")
    user_error(quick("predict", hostile[kind], tmp_path / "data"), hostile[kind], WHAT[kind])
    user_error(quick("evaluate", hostile[kind], tmp_path / "data"), hostile[kind], WHAT[kind])


@pytest.mark.parametrize("kind", sorted(WHAT))
def test_image_that_is_not_a_regular_file(tmp_path, hostile, kind):
    model = probe_model(tmp_path / "m.onnx")
    stderr = user_error(quick("predict", model, hostile[kind]), hostile[kind], WHAT[kind])
    assert "1 input could not be predicted" in stderr


@pytest.mark.parametrize("kind", sorted(WHAT))
def test_evaluate_data_that_is_not_a_regular_file(tmp_path, hostile, kind):
    model = probe_model(tmp_path / "m.onnx")
    user_error(quick("evaluate", model, hostile[kind]), hostile[kind], WHAT[kind])


def test_csv_row_that_points_at_a_fifo_or_device_is_named_not_missing(tmp_path, hostile):
    image_folder(tmp_path / "data")
    os.symlink(hostile["fifo"], tmp_path / "data" / "a" / "pipe.png")
    os.symlink("/dev/zero", tmp_path / "data" / "b" / "zero.png")
    write(tmp_path / "data" / "l.csv", "path,label\na/0.png,a\na/pipe.png,a\nb/zero.png,b\nb/0.png,b\n")
    with pytest.raises(DataError) as info:
        list_csv(str(tmp_path / "data" / "l.csv"))
    text = str(info.value)
    assert "2 paths listed in l.csv are not regular files" in text, text
    assert "a/pipe.png (a FIFO (named pipe))" in text and "b/zero.png (a device)" in text, text


def test_fifo_or_device_inside_an_image_folder_is_named_never_opened(tmp_path, hostile):
    """A FIFO or a link to /dev/zero named like an image, in a folder: listed, then named by what it is."""
    model = probe_model(tmp_path / "m.onnx")
    image_folder(tmp_path / "data")
    os.mkfifo(tmp_path / "data" / "a" / "stuck.png")
    os.symlink("/dev/zero", tmp_path / "data" / "b" / "zero.png")
    listed = list_images(str(tmp_path / "data"))
    assert {"stuck.png", "zero.png"} <= {os.path.basename(p) for p in listed}, listed
    result = quick("predict", model, tmp_path / "data")
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"stuck.png: {WHAT['fifo']}" in result.stderr and f"zero.png: {WHAT['zero']}" in result.stderr
    assert "2 inputs could not be predicted; 8 predicted" in result.stderr, result.stderr


def test_size_limits_are_enforced_per_kind(tmp_path, monkeypatch):
    big = write(tmp_path / "labels.csv", "path,label\n" + "a.png,a\n" * 200)
    monkeypatch.setitem(readfile.LIMITS, "csv", 100)
    with pytest.raises(FileReadError, match=r"labels.csv: is larger than 100 bytes, the limit for a CSV file"):
        read_text(big, "csv")
    with pytest.raises(DataError, match=r"data.source.path: .*labels.csv: is larger than 100 bytes"):
        list_csv(str(big))
    spec = write(tmp_path / "spec.yaml", tiny_spec("{type: csv, path: labels.csv}"))
    user_error(cli("validate", spec), "labels.csv", "is larger than 100 bytes")


def test_a_file_that_grows_past_its_stat_size_is_still_cut_at_the_limit():
    # /proc files report size 0 but have content: the read itself is bounded too.
    with pytest.raises(FileReadError, match="is larger than 10 bytes"):
        read_bytes("/proc/self/status", "json", limit=10)
    assert b"Name:" in read_bytes("/proc/self/status", "json")


def test_reader_messages(tmp_path, hostile):
    with pytest.raises(FileReadError, match=r": file not found$"):
        read_bytes(tmp_path / "nope")
    os.symlink(tmp_path / "gone", tmp_path / "link")
    with pytest.raises(FileReadError, match=r"broken link"):
        read_bytes(tmp_path / "link")
    with pytest.raises(FileReadError, match=r"is a folder, not a regular file"):
        read_bytes(tmp_path)
    write(tmp_path / "latin1.csv", "path,label\n\xe9.png,a\n".encode("latin-1"))
    with pytest.raises(FileReadError, match=r"is not UTF-8 text \(byte 0xe9 at offset 11\)"):
        read_text(tmp_path / "latin1.csv", "csv")


def test_read_json_names_the_position_and_refuses_fifos(tmp_path, hostile):
    assert read_json(write(tmp_path / "ok.json", '{"a": [1, 2]}'), "split") == {"a": [1, 2]}
    with pytest.raises(FileReadError, match=r"bad.json: is not valid JSON \(line 2, column 1: "):
        read_json(write(tmp_path / "bad.json", '{"a":\n}'), "split")
    with pytest.raises(FileReadError, match=r"nested too deeply"):
        read_json(write(tmp_path / "deep.json", "[" * 100_000), "json")
    with pytest.raises(FileReadError, match=r"is a FIFO"):
        read_json(hostile["fifo"], "split")
