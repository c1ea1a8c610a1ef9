"""Silent wrong results: convspec's own outputs taken as data, a model whose outputs do not match
its classes, non-finite numbers in a spec. Each is refused (exit 1, one line) or, for outputs
inside a data folder, skipped with a warning, never used.
"""

from __future__ import annotations

import json
import re

import pytest

from convspec.runtime.datasets import list_folder, list_images
from convspec.specs.classes import RUN_MARKER, is_run_folder

from .conftest import classifier_model, cli, image_folder, save_png, tiny_spec, user_error, write


def run_folder(folder, marker: bool = False, files=("spec.yaml", "split.json", "metrics.jsonl")):
    """A folder as ``convspec train`` leaves it: run files, plots (real PNGs), optionally the marker."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        write(folder / name, "{}\n")
    if marker:
        write(folder / RUN_MARKER, "")
    for plot in ("curves.png", "confusion.png", "errors.png", "roc.png"):
        save_png(folder / plot, 200)
    return folder


@pytest.mark.parametrize(
    "layout",
    [
        "runs/NAME (spec.yaml + split.json)",
        "runs/NAME (marker only)",
        "NAME at the top (spec.yaml + metrics.jsonl)",
        "tune folder",
    ],
)
def test_run_folders_inside_the_data_folder_are_not_classes(tmp_path, layout):
    data = image_folder(tmp_path / "data")
    if layout.startswith("runs/NAME (spec"):
        run_folder(data / "runs" / "digits")
        run_folder(data / "runs" / "digits-2")
    elif layout.startswith("runs/NAME (marker"):
        run_folder(data / "runs" / "digits", marker=True, files=())
    elif layout.startswith("NAME"):
        run_folder(data / "old-run", files=("spec.yaml", "metrics.jsonl", "last.pt"))
    else:
        tune = data / "study-tune"
        write(tune / "tune.json", "{}")
        write(tune / "best.yaml", "version: 1\n")
        save_png(tune / "history.png", 10)
    logs: list[str] = []
    samples, classes = list_folder(str(data), log=logs.append)
    assert classes == ["a", "b"], classes
    assert len(samples) == 8 and all("/a/" in p or "/b/" in p for p, _ in samples)
    assert logs and "a folder convspec wrote" in logs[0], logs


def test_evaluate_and_validate_ignore_a_runs_folder_in_the_data(tmp_path):
    data = image_folder(tmp_path / "data")
    run_folder(data / "runs" / "digits")
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"))
    result = cli("evaluate", model, data, "--format", "json")
    assert result.exit_code == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["images"] == 8 and scored["classes"] == ["a", "b"]
    spec = write(tmp_path / "spec.yaml", tiny_spec("{type: folder, path: data}", classes="[a, b]"))
    assert cli("validate", spec).exit_code == 0


def test_predict_on_a_folder_skips_run_folders_and_a_run_folders_plots(tmp_path):
    images = tmp_path / "inbox"
    save_png(images / "x.png", 10)
    run_folder(images / "runs" / "r1")
    model = classifier_model(tmp_path / "m.onnx")
    result = cli("predict", model, images, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert [p["source"] for p in json.loads(result.stdout)] == [str(images / "x.png")]
    run = run_folder(tmp_path / "r2", marker=True)
    save_png(run / "sample.png", 50)  # an image the user put there: kept
    assert [p.rsplit("/", 1)[-1] for p in list_images(str(run))] == ["sample.png"]


def test_a_data_folder_is_not_a_run_folder():
    # Why this matters: a class folder full of images and one stray spec.yaml is still data.
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        data = image_folder(Path(d) / "data")
        write(data / "a" / "spec.yaml", "x: 1\n")
        assert not is_run_folder(str(data)) and not is_run_folder(str(data / "a"))


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_output_width_that_differs_from_the_class_list_is_refused(tmp_path, command):
    data = image_folder(tmp_path / "data")
    model = classifier_model(tmp_path / "m.onnx", ("a", "b", "c"), width=5)
    user_error(cli(command, model, data), "m.onnx", "5 values per image", "lists 3 classes")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_output_shape_that_differs_at_run_time_is_refused(tmp_path, command):
    data = image_folder(tmp_path / "data", per_class=8)  # 16 files: an even batch on up to 8 cores
    # (N, 3) scores reshaped to (-1, 2): the declared shape fits 2 classes, a batch of N gives (3N/2, 2)
    model = classifier_model(
        tmp_path / "m.onnx", ("a", "b", "c"), reshape_to=[-1, 2], props={"convspec.classes": '["a", "b"]'}
    )
    stderr = user_error(cli(command, model, data), "m.onnx", "the model returned [", "lists 2 classes, so (")
    n = int(re.search(r"for a batch of (\d+)", stderr).group(1))  # the batch a worker ran (split by cores)
    assert f"returned [{3 * n // 2}, 2] for a batch of {n}" in stderr and f"({n}, 2) was expected" in stderr, stderr


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1e400", "inf"), (".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("1e999", "inf")],
)
def test_non_finite_numbers_are_refused_with_their_position(tmp_path, value, shown):
    spec = tiny_spec("{type: builtin, name: digits}").replace(
        "training: {epochs: 1, batch_size: 4, device: cpu}",
        f"training:\n  epochs: 1\n  optimizer: {{type: adam, lr: {value}}}",
    )
    path = write(tmp_path / "spec.yaml", spec)
    stderr = user_error(cli("validate", path), f"training.optimizer.lr: must be a finite number (got {shown})")
    assert "spec.yaml:14:" in stderr, stderr


def test_non_finite_numbers_anywhere_and_in_set(tmp_path):
    spec = tiny_spec("{type: builtin, name: digits}").replace(
        "training: {epochs: 1, batch_size: 4, device: cpu}",
        "training:\n  loss: {class_weights: [1.0, .nan]}\n  grad_clip: .inf",
    )
    path = write(tmp_path / "spec.yaml", spec)
    stderr = user_error(cli("validate", path), "training.loss.class_weights[1]", "training.grad_clip")
    assert "must be a finite number (got nan)" in stderr and "(got inf)" in stderr
    base = write(tmp_path / "ok.yaml", tiny_spec("{type: builtin, name: digits}"))
    user_error(
        cli("summary", base, "--set", "training.optimizer={type: sgd, lr: .inf}"),
        "--set training.optimizer",
        "training.optimizer.lr: must be a finite number (got inf)",
    )
