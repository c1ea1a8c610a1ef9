"""Tracebacks that used to reach the user: the file system refusing a write, ONNX files with hostile
metadata, a graph that fails when run, ORT's own C++ log lines. Each is one typed ConvspecError
line, raised where it arises (the writer, the metadata reader, the run), exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convspec.runtime.files import WriteError, atomic_write, atomic_write_text, ensure_folder

from .conftest import classifier_model, cli, image_folder, user_error, write


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- the file system


def test_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path):
    def write_to_full_disk(tmp: str) -> None:
        with open(tmp, "wb") as f, open("/dev/full", "wb") as full:  # /dev/full: every write is ENOSPC
            f.write(b"half")
            full.write(b"x" * 65536)
            full.flush()

    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "model.onnx", write_to_full_disk)
    assert str(info.value) == f"{tmp_path / 'model.onnx'}: cannot write (no space left on device)"
    assert leftovers(tmp_path) == [] and not (tmp_path / "model.onnx").exists()


def test_target_that_is_a_folder(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(WriteError, match=r"model.onnx: cannot write \(it is a folder\)"):
        atomic_write_text(tmp_path / "model.onnx", "x")
    assert leftovers(tmp_path) == []


def test_target_that_is_a_fifo_or_a_device_is_refused_not_replaced(tmp_path):
    """A rename swaps the directory entry: ``--out /dev/null`` as root used to replace the device."""
    import stat

    os.mkfifo(tmp_path / "curves.png")
    with pytest.raises(WriteError, match=r"curves.png: cannot write \(it is a FIFO \(named pipe\), not a regular"):
        atomic_write_text(tmp_path / "curves.png", "x")
    assert stat.S_ISFIFO(os.stat(tmp_path / "curves.png").st_mode) and leftovers(tmp_path) == []
    if os.geteuid() != 0:
        return
    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
    user_error(cli("schema", "--out", tmp_path / "null"), "null: cannot write (it is a device, not a regular file")
    assert stat.S_ISCHR(os.stat(tmp_path / "null").st_mode) and leftovers(tmp_path) == []


def test_parent_that_is_a_file(tmp_path):
    write(tmp_path / "runs", "a file where a folder should be")
    # the file asked for, then what is in its way
    with pytest.raises(WriteError, match=r"spec.yaml: cannot write \(.*runs: it is a file, not a folder\)"):
        atomic_write_text(tmp_path / "runs" / "x" / "spec.yaml", "x")
    with pytest.raises(WriteError, match=r"runs: cannot write \(it is a file, not a folder\)"):
        ensure_folder(tmp_path / "runs" / "x" / "y")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"cannot write \(permission denied\)"):
            atomic_write_text(ro / "spec.yaml", "x")
    finally:
        ro.chmod(0o700)


def test_a_failing_writer_that_is_not_an_os_error_passes_through_and_cleans_up(tmp_path):
    def broken(tmp: str) -> None:
        open(tmp, "wb").close()
        raise ValueError("a bug in the caller")

    with pytest.raises(ValueError, match="a bug in the caller"):
        atomic_write(tmp_path / "x.bin", broken)
    assert leftovers(tmp_path) == []


def test_schema_out_that_is_a_folder_or_under_a_file(tmp_path):
    user_error(cli("schema", "--out", tmp_path), str(tmp_path), "cannot write (it is a folder)")
    write(tmp_path / "f", "x")
    user_error(cli("schema", "--out", tmp_path / "f" / "schema.json"), "cannot write", "it is a file, not a folder")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- hostile ONNX metadata

HOSTILE = {
    "unknown-resize": ({"convspec.resize": "zoom"}, "convspec.resize must be one of stretch, letterbox, crop"),
    "size-0": ({"convspec.input_size": "[0, 0]"}, "convspec.input_size must be [height, width]"),
    "size-enormous": ({"convspec.input_size": "[100000, 100000]"}, "each 1..8192"),
    "size-not-json": ({"convspec.input_size": "8x8"}, "convspec.input_size is not JSON"),
    "size-three": ({"convspec.input_size": "[8, 8, 8]"}, "convspec.input_size must be [height, width]"),
    "size-floats": ({"convspec.input_size": "[8.5, 8]"}, "convspec.input_size must be [height, width]"),
    "classes-not-json": ({"convspec.classes": "a, b"}, "convspec.classes is not JSON"),
    "classes-a-string": ({"convspec.classes": '"ab"'}, "convspec.classes must be a JSON list of names"),
    "classes-a-mapping": ({"convspec.classes": '{"a": 1}'}, "convspec.classes must be a JSON list of names"),
    "classes-nested": ({"convspec.classes": '[["a"], "b"]'}, "convspec.classes must be a JSON list of names"),
    "classes-repeated": ({"convspec.classes": '["a", "a"]'}, "convspec.classes repeats a"),
    "classes-one": ({"convspec.classes": '["a"]'}, "at least 2"),
    "classes-mismatch": ({"convspec.classes": '["a", "b", "c"]'}, "2 values per image but its metadata lists 3"),
    "channels-word": ({"convspec.channels": "grey"}, "convspec.channels must be an integer"),
    "channels-4": ({"convspec.channels": "4"}, "convspec.channels must be 1 or 3"),
    "task-unknown": ({"convspec.task": "ternary"}, "convspec.task must be binary or multiclass"),
    "binary-3-classes": (
        {"convspec.task": "binary", "convspec.classes": '["a", "b", "c"]'},
        "a binary model has 2 classes",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_hostile_metadata_is_one_line(tmp_path, case, command):
    props, words = HOSTILE[case]
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"), props=props)
    data = image_folder(tmp_path / "data")
    user_error(cli(command, model, data), "m.onnx", words)


def test_test_metrics_that_are_not_json_are_ignored_with_a_warning(tmp_path):
    model = classifier_model(tmp_path / "m.onnx", props={"convspec.test_metrics": "{broken"})
    image_folder(tmp_path / "data")
    result = cli("predict", model, tmp_path / "data")
    assert result.exit_code == 0, result.stderr
    assert "convspec.test_metrics is not a JSON object; ignored" in result.stderr


# ---------------------------------------------------------------- a graph that fails when run


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "convspec.compiler", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_graph_that_fails_when_run_is_a_model_error_and_ort_logs_nothing(tmp_path):
    # Reshape (N, 2) -> (5, -1): 2N values of a batch of 8 (or of 4, split over 2 cores) do not split into 5 rows
    model = classifier_model(tmp_path / "m.onnx", reshape_to=[5, -1])
    image_folder(tmp_path / "data")
    for command in ("predict", "evaluate"):
        result = run_cli(command, model, tmp_path / "data")
        user_error(result, "m.onnx", "the model failed when run on a batch of ", "cannot be reshaped")
        assert "[E:" not in result.stderr and "onnxruntime_src" not in result.stderr, result.stderr


def test_model_that_fails_to_load_leaves_no_ort_log_lines(tmp_path):
    model = classifier_model(tmp_path / "m.onnx")
    blob = model.read_bytes()
    write(tmp_path / "cut.onnx", blob[: len(blob) // 2])
    result = run_cli("predict", tmp_path / "cut.onnx", tmp_path)
    user_error(result, "cut.onnx")
    assert "onnxruntime:" not in result.stderr and "[E:" not in result.stderr, result.stderr
