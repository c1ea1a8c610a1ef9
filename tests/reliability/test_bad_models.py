"""Model files and checkpoints that cannot be used: refused by name, exit 1, never executed.

The required case: a checkpoint whose unpickling would run ``os.system`` (write a marker
file). ``convspec export RUN`` and ``convspec train --resume RUN`` must refuse it and the
marker must not appear; a control shows the same file does run code under a plain
``torch.load(weights_only=False)``, so the test would catch a regression.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from convspec.specs import ConvspecError

from .conftest import cli, cli_subprocess, probe_model, save_png, user_error, write


def malicious_checkpoint(path: Path, marker: Path, *, zip_format: bool = True) -> Path:
    """A .pt that looks like a convspec checkpoint and runs ``touch MARKER`` when unpickled."""
    code = f"""
import os, pickle, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
state = {{"format": 1, "model": Payload(), "spec": "version: 1", "epoch": 3}}
if {zip_format!r}:
    torch.save(state, sys.argv[1])
else:
    with open(sys.argv[1], "wb") as f:
        pickle.dump(state, f)
"""
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    assert not marker.exists()
    return path


def foreign_float_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


# ------------------------------------------------------- pickled code: never executed


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "raw-pickle"])
def test_export_and_resume_refuse_a_checkpoint_that_would_run_code(run_copy, tmp_path, zip_format):
    marker = tmp_path / "PWNED"
    for name in ("best.pt", "last.pt"):
        malicious_checkpoint(run_copy / name, marker, zip_format=zip_format)
    (run_copy / "model.onnx").unlink()

    user_error(cli("export", run_copy), "best.pt", "refused", "weights_only=True")
    assert not marker.exists()
    user_error(cli_subprocess("train", "--resume", run_copy, "--out", tmp_path / "runs"), "last.pt", "refused")
    assert not marker.exists()
    user_error(cli_subprocess("export", run_copy), "best.pt", "refused")
    assert not marker.exists()
    assert not (run_copy / "model.onnx").exists()


def test_the_malicious_checkpoint_does_run_code_when_loaded_unsafely(tmp_path):
    """Control: the payload is live, so the refusals above are what keeps the marker away."""
    marker = tmp_path / "PWNED"
    path = malicious_checkpoint(tmp_path / "evil.pt", marker)
    subprocess.run(
        [sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)", str(path)],
        timeout=120,
        capture_output=True,
    )
    assert marker.exists()


# ------------------------------------------------------------------ checkpoints


def test_resume_refuses_a_truncated_checkpoint(run_copy, tmp_path):
    data = (run_copy / "last.pt").read_bytes()
    (run_copy / "last.pt").write_bytes(data[: len(data) // 2])
    user_error(cli("train", "--resume", run_copy, "--out", tmp_path / "runs"), "last.pt", "not a readable checkpoint")


def test_resume_refuses_a_checkpoint_that_is_not_convspecs(run_copy, tmp_path):
    import torch

    torch.save({"state_dict": {"w": torch.zeros(2)}}, run_copy / "last.pt")
    user_error(cli("train", "--resume", run_copy), "last.pt", "not a convspec checkpoint")


def test_resume_with_a_changed_spec_refuses_with_a_diff(run_copy, tmp_path):
    result = cli(
        "train",
        run_copy / "spec.yaml",
        "--resume",
        run_copy,
        "--set",
        "model.layers.0.filters=7",
        "--set",
        "training.batch_size=13",
        "--set",
        "training.epochs=9",
    )
    stderr = user_error(result, "cannot resume", "the spec differs", max_lines=12)
    diff = [ln for ln in stderr.splitlines() if ln.startswith(("-", "+"))]
    assert any("filters: 32" in ln for ln in diff) and any("filters: 7" in ln for ln in diff)
    assert any("batch_size: 64" in ln for ln in diff) and any("batch_size: 13" in ln for ln in diff)


def test_resume_of_a_missing_run_folder(tmp_path):
    user_error(cli("train", "--resume", tmp_path / "nowhere"), "nowhere", "folder not found")


def test_export_refuses_weights_from_another_architecture(run_copy):
    # The checkpoint's spec is the truth: an edited spec.yaml is refused with the diff
    # (tests/reliability/test_hostile_runs.py covers weights that do not fit the checkpoint's own spec).
    spec = (run_copy / "spec.yaml").read_text("utf-8")
    (run_copy / "spec.yaml").write_text(spec.replace("filters: 32", "filters: 16", 1), "utf-8")
    user_error(cli("export", run_copy), "spec.yaml", "differs from the spec in best.pt", max_lines=6)


def test_export_needs_a_run_folder(tmp_path):
    user_error(cli("export", tmp_path / "nowhere"), "nowhere", "run folder not found")
    (tmp_path / "empty").mkdir()
    user_error(cli("export", tmp_path / "empty"), "no best.pt or last.pt")


# --------------------------------------------------------------------- ONNX models


def make_truncated(d: Path) -> Path:
    data = probe_model(d / "full.onnx").read_bytes()
    return write(d / "model.onnx", data[: len(data) // 2])


def make_bad_metadata(d: Path) -> Path:
    path = probe_model(d / "model.onnx")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "convspec.classes":
            prop.value = "[not json"
    onnx.save(model, path)
    return path


BAD_MODELS = {
    "truncated-onnx": (make_truncated, ["model.onnx", "truncated or corrupt"]),
    "foreign-float-input": (lambda d: foreign_float_model(d / "model.onnx"), ["model.onnx", "tensor(float)", "uint8"]),
    "checkpoint-as-model": (
        lambda d: (__import__("torch").save({"w": 1}, d / "model.onnx"), d / "model.onnx")[1],
        ["model.onnx", "zip archive"],
    ),
    "text-as-model": (lambda d: write(d / "model.onnx", "hello"), ["model.onnx", "not an ONNX model"]),
    "empty-model": (lambda d: write(d / "model.onnx", b""), ["model.onnx", "empty file"]),
    "missing-model": (lambda d: d / "model.onnx", ["model.onnx", "model file not found"]),
    "folder-without-model": (lambda d: (d / "run").mkdir() or d / "run", ["run", "without model.onnx"]),
    "malformed-metadata": (make_bad_metadata, ["model.onnx", "malformed convspec metadata"]),
}


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("name", list(BAD_MODELS))
def test_bad_model_file_is_a_clean_error(name, command, tmp_path):
    make, words = BAD_MODELS[name]
    model = make(tmp_path)
    image = save_png(tmp_path / "images" / "a" / "0.png", size=(6, 6))
    save_png(tmp_path / "images" / "b" / "0.png", size=(6, 6))
    target = image if command == "predict" else tmp_path / "images"
    user_error(cli(command, model, target), *words)


def test_foreign_uint8_model_without_metadata_is_served_with_a_warning(tmp_path):
    """Handled, not refused: numbered labels, input size from the graph, a warning on stderr."""
    path = probe_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, path)
    result = cli("predict", path, save_png(tmp_path / "x.png", 9, (6, 6)), "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "no convspec metadata" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)[0]["label"].isdigit()


def test_evaluate_with_a_missing_data_folder(tmp_path):
    user_error(cli("evaluate", probe_model(tmp_path / "m.onnx"), tmp_path / "nowhere"), "nowhere", "not found")


def test_model_errors_are_convspec_errors_from_the_python_api(tmp_path):
    from convspec.runtime import Predictor
    from convspec.runtime.predictor import ModelError

    with pytest.raises(ModelError, match="truncated or corrupt") as info:
        Predictor(make_truncated(tmp_path))
    assert isinstance(info.value, ConvspecError)
    from convspec.compiler.run import checkpoint

    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(malicious_checkpoint(tmp_path / "x.pt", tmp_path / "M"))
    assert not (tmp_path / "M").exists()
    assert os.path.exists(tmp_path / "x.pt")


def test_corrupt_split_json_is_named_by_evaluate_and_resume(run_copy):
    (run_copy / "split.json").write_text('{"version": 1, "splits": ', "utf-8")
    user_error(cli("evaluate", run_copy / "model.onnx", run_copy), "split.json", "not a readable split file")
    user_error(cli("train", "--resume", run_copy), "split.json", "not a readable split file")


@pytest.mark.parametrize("damage", ["truncated", "fifo"])
def test_export_with_a_corrupt_results_json_warns_and_still_exports(run_copy, damage):
    (run_copy / "model.onnx").unlink()
    if damage == "fifo":  # reading one would wait for a writer forever
        (run_copy / "results.json").unlink()
        os.mkfifo(run_copy / "results.json")
    else:
        (run_copy / "results.json").write_text('{"test": ', "utf-8")
    result = cli("export", run_copy)
    assert result.exit_code == 0, result.stderr
    want = "is a FIFO (named pipe)" if damage == "fifo" else "is not valid JSON (line 1"
    assert f"results.json: {want}" in result.stderr and "Traceback" not in result.stderr
    onnx.checker.check_model(onnx.load(str(run_copy / "model.onnx")))


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda data: b"", "empty file (0 bytes)"),
        (lambda data: data[:100], "truncated or corrupt (100 bytes: a zip archive with no end"),
        (
            lambda data: b"hello\n",
            "not a PyTorch checkpoint (6 bytes; torch.save writes a zip archive, this is neither",
        ),
        (lambda data: data[:200] + bytes(b ^ 0x5A for b in data[200:600]) + data[600:], "corrupt, torch.load failed"),
    ],
    ids=["empty", "cut", "text", "flipped"],
)
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(run_copy, damage, says):
    data = (run_copy / "best.pt").read_bytes()
    (run_copy / "best.pt").write_bytes(damage(data))
    user_error(cli("export", run_copy), "best.pt: not a readable checkpoint", says)
    assert not (run_copy / "model.onnx.tmp").exists()
