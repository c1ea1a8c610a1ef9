"""Hostile file systems: outputs that are files, folders, read-only or full; runs inside the data.

Every case ends in one line naming the path and what is wrong (exit 1), before any slow work,
and leaves nothing behind: no run folder, no temporary file, no half-written artifact. Read-only
folders are tested for real where the tests do not run as root, and with the OS error injected
(monkeypatched) everywhere.
"""

from __future__ import annotations

import errno
import types

import numpy as np
import pytest

from convspec.compiler.run import files as run_files
from convspec.compiler.run.files import MARKER, WriteError

from .conftest import cli, files_of, image_folder, read_only, tiny_spec, user_error, write


@pytest.fixture
def data_spec(tmp_path):
    data = image_folder(tmp_path / "data")
    return write(tmp_path / "tiny.yaml", tiny_spec(f"{{type: folder, path: {data}}}")), data


def no_probe(err: int):
    """A ``tempfile`` stand-in whose mkstemp fails with ``err`` (a read-only or full folder)."""

    def mkstemp(*_a, **_k):
        raise OSError(err, "injected")

    return types.SimpleNamespace(mkstemp=mkstemp)


# ------------------------------------------------------------------------- --out


def test_out_that_is_a_file_is_refused_before_the_data_loads(data_spec, tmp_path):
    spec, _ = data_spec
    write(tmp_path / "runs", "not a folder")
    stderr = user_error(cli("train", spec, "--out", tmp_path / "runs"), "--out", "runs", "is a file")
    assert "data:" not in stderr  # refused before listing or decoding anything
    user_error(cli("train", spec, "--out", tmp_path / "runs" / "deeper"), "--out", "its parent", "is a file")
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_out_on_a_read_only_folder(data_spec, tmp_path):
    spec, _ = data_spec
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    try:
        user_error(cli("train", spec, "--out", ro / "runs"), "--out", "cannot write", "permission denied")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("err, words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "no space left")])
def test_out_on_a_read_only_or_full_file_system_injected(data_spec, tmp_path, monkeypatch, err, words):
    spec, _ = data_spec
    monkeypatch.setattr(run_files, "tempfile", no_probe(err))
    user_error(cli("train", spec, "--out", tmp_path / "runs"), "--out", "cannot write", words)
    assert not (tmp_path / "runs").exists()


def test_schema_out_that_is_a_folder_or_under_a_file(tmp_path):
    (tmp_path / "schema").mkdir()
    user_error(cli("schema", "--out", tmp_path / "schema"), "--out", "is a folder")
    assert list((tmp_path / "schema").iterdir()) == []
    write(tmp_path / "file", "x")
    user_error(cli("schema", "--out", tmp_path / "file" / "schema.json"), "schema.json", "cannot write")
    assert (tmp_path / "file").read_text() == "x"


def test_schema_out_into_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    try:
        user_error(cli("schema", "--out", ro / "s.json"), "s.json", "cannot write the schema", "permission denied")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------- export writes


def test_export_where_model_onnx_is_a_folder(tiny_run):
    (tiny_run / "model.onnx").mkdir()
    before = files_of(tiny_run)
    user_error(cli("export", tiny_run), "model.onnx", "is a folder")
    assert files_of(tiny_run) == before and (tiny_run / "model.onnx").is_dir()


def test_export_into_a_read_only_run_folder(tiny_run):
    read_only(tiny_run)
    try:
        user_error(cli("export", tiny_run), "export into", "permission denied")
        assert not (tiny_run / "model.onnx").exists()
    finally:
        tiny_run.chmod(0o755)


def test_export_into_a_read_only_run_folder_injected(tiny_run, monkeypatch):
    before = files_of(tiny_run)
    monkeypatch.setattr(run_files, "tempfile", no_probe(errno.EROFS))
    user_error(cli("export", tiny_run), "export into", str(tiny_run), "read-only")
    assert files_of(tiny_run) == before


def test_a_full_disk_while_writing_model_onnx_is_one_line(tiny_run, monkeypatch):
    """The write itself (not the probe) fails: WriteError names model.onnx; no temp file is left."""
    from convspec.compiler.export import onnx as export_onnx

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_onnx, "atomic_write_bytes", full)
    monkeypatch.setattr(
        export_onnx, "check_parity", lambda *a: {"images": 1, "top1_agreement": 1.0, "max_abs_diff": 0.0}
    )
    with pytest.raises(WriteError, match=r"model\.onnx: cannot write the model: no space left"):
        export_onnx.export_onnx(tiny_run, log=lambda _m: None)
    assert not (tiny_run / "model.onnx").exists()
    assert not list(tiny_run.glob(".*.tmp"))


# ------------------------------------------------------------- the disk cache


def test_a_read_only_cache_falls_back_to_memory_with_a_warning(data_spec, tmp_path, monkeypatch):
    from convspec.compiler.data import decoding, loading
    from convspec.specs import load_spec

    spec_file, _ = data_spec
    spec = load_spec(spec_file, overrides=["data.cache=disk"])
    reference = loading.load_dataset(load_spec(spec_file, overrides=["data.cache=none"]), log=lambda _m: None)
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    monkeypatch.setattr(decoding, "tempfile", no_probe(errno.EACCES))
    lines: list[str] = []
    ds = loading.load_dataset(spec, cache_dir=cache, log=lines.append)
    assert any(ln.startswith("warning: cannot write the disk cache") and "memory" in ln for ln in lines), lines
    assert np.array_equal(ds.images, reference.images)
    assert list((cache / "images").iterdir()) == []


def test_a_read_only_convspec_cache_trains(data_spec, tmp_path, monkeypatch):
    spec, _ = data_spec
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    read_only(cache / "images")
    monkeypatch.setenv("CONVSPEC_CACHE", str(cache))
    try:
        result = cli("train", spec, "--set", "data.cache=disk", "--out", tmp_path / "runs", "--no-export")
        assert result.exit_code == 0, result.stderr
        assert "warning: cannot" in result.stderr and "keeping images in memory" in result.stderr
    finally:
        (cache / "images").chmod(0o755)


@pytest.mark.parametrize("damage", ["fifo", "dev_zero", "cut_short", "json_fifo", "json_garbage"])
def test_a_damaged_disk_cache_entry_is_decoded_again_and_replaced(data_spec, tmp_path, damage):
    """An edited cache folder: a FIFO or /dev/zero in an entry's place, a .npy cut short, a bad .json.

    Never a hang (np.load opens a FIFO and waits for a writer), never wrong pixels: a miss.
    """
    import os

    from convspec.compiler.data import loading
    from convspec.specs import load_spec

    spec = load_spec(data_spec[0], overrides=["data.cache=disk"])
    cache = tmp_path / "cache"
    first = np.array(loading.load_dataset(spec, cache_dir=cache, log=lambda _m: None).images)  # a copy, not the memmap
    (npy,) = (cache / "images").glob("*.npy")
    target = npy.with_suffix(".json") if damage.startswith("json") else npy
    if damage == "cut_short":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif damage == "json_garbage":
        target.write_bytes(b"\xff{not json")
    else:
        target.unlink()
        os.mkfifo(target) if damage in ("fifo", "json_fifo") else target.symlink_to("/dev/zero")
    lines: list[str] = []
    again = loading.load_dataset(spec, cache_dir=cache, log=lines.append)
    assert not any("from the disk cache" in ln for ln in lines), lines  # a miss, decoded again
    assert np.array_equal(np.asarray(again.images), first)
    assert npy.is_file() and npy.with_suffix(".json").is_file()  # the entry rewritten
    lines.clear()
    loading.load_dataset(spec, cache_dir=cache, log=lines.append)
    assert any("from the disk cache" in ln for ln in lines), lines


# ------------------------------------------------- run folders inside the data


def test_out_inside_the_data_folder_is_refused_unless_asked(data_spec, tmp_path):
    spec, data = data_spec
    before = files_of(data)
    stderr = user_error(cli("train", spec, "--out", data / "runs"), "--out", "inside the data folder")
    assert "--allow-out-in-data" in stderr
    user_error(cli("train", spec, "--out", data), "inside the data folder")
    assert files_of(data) == before and not (data / "runs").exists()

    result = cli("train", spec, "--out", data / "runs", "--allow-out-in-data", "--no-export")
    assert result.exit_code == 0, result.stderr
    (run,) = (data / "runs").iterdir()
    assert (run / MARKER).is_file()


def test_out_inside_a_csv_root_is_allowed(tmp_path):
    """A CSV names its files, so a run folder beside them is never read as data: not refused."""
    from convspec.compiler.run.files import check_run_out
    from convspec.specs import load_spec

    data = image_folder(tmp_path / "imgs")
    rows = "".join(f"{p.relative_to(data)},{p.parent.name}\n" for p in sorted(data.rglob("*.png")))
    csv = write(data / "labels.csv", "path,label\n" + rows)
    spec = load_spec(write(tmp_path / "csv.yaml", tiny_spec(f"{{type: csv, path: {csv}}}")))
    check_run_out(data / "out", spec)
    assert not (data / "out").exists()


def test_every_run_folder_has_the_marker(tiny_run):
    assert (tiny_run / MARKER).is_file()


def test_out_checks_do_not_create_anything(tmp_path):
    """check_output_folder probes but creates nothing, even for a deep new path."""
    run_files.check_output_folder(tmp_path / "a" / "b" / "c", "--out")
    assert list(tmp_path.iterdir()) == []


def test_resume_of_a_read_only_run_fails_before_training(tiny_run, monkeypatch):
    before = files_of(tiny_run)
    monkeypatch.setattr(run_files, "tempfile", no_probe(errno.EROFS))
    stderr = user_error(cli("train", "--resume", tiny_run, "--set", "training.epochs=2"), "--resume", "read-only")
    assert "epoch" not in stderr and files_of(tiny_run) == before


def test_a_disk_cache_that_cannot_reserve_its_file_falls_back_to_memory(data_spec, tmp_path, monkeypatch):
    """The memmap is sparse: a disk that fills while it is written (another run sharing the cache)
    killed the process with SIGBUS. Its blocks are reserved first; ENOSPC there falls back to memory."""
    from convspec.compiler.data import decoding, loading
    from convspec.specs import load_spec

    spec_file, _ = data_spec
    reference = loading.load_dataset(load_spec(spec_file, overrides=["data.cache=none"]), log=lambda _m: None)
    reserved: list[str] = []

    def full(fd, offset, length):
        reserved.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decoding.os, "posix_fallocate", full, raising=False)
    lines: list[str] = []
    cache = tmp_path / "cache"
    ds = loading.load_dataset(load_spec(spec_file, overrides=["data.cache=disk"]), cache_dir=cache, log=lines.append)
    assert reserved and reserved[0] >= reference.images.nbytes  # the whole file, before any row is written
    assert any("cannot write the disk cache" in ln and "No space left" in ln for ln in lines), lines
    assert np.array_equal(ds.images, reference.images)
    assert list((cache / "images").iterdir()) == []  # no .full.tmp left behind


def test_a_disk_cache_that_fills_before_its_entry_is_complete_falls_back_to_memory(data_spec, tmp_path, monkeypatch):
    """The disk filled after the images were decoded, when the entry's .json was written: the run
    ended with exit 1 and left a data-set-sized .npy that nothing would read."""
    from convspec.compiler.data import decoding, loading
    from convspec.runtime.files import WriteError
    from convspec.specs import load_spec

    spec_file, _ = data_spec
    reference = loading.load_dataset(load_spec(spec_file, overrides=["data.cache=none"]), log=lambda _m: None)

    def full(path, text):
        raise WriteError(path, "no space left on device")

    monkeypatch.setattr(decoding, "atomic_write_text", full)
    lines: list[str] = []
    cache = tmp_path / "cache"
    ds = loading.load_dataset(load_spec(spec_file, overrides=["data.cache=disk"]), cache_dir=cache, log=lines.append)
    assert any("cannot write the disk cache" in ln and "no space left on device" in ln for ln in lines), lines
    assert np.array_equal(ds.images, reference.images)
    assert list((cache / "images").iterdir()) == []  # neither the .npy nor a .full.tmp is left
