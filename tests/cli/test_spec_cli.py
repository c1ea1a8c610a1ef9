"""``convspec validate``, ``summary`` and ``schema``: messages, exit codes, and no torch at startup."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convspec.compiler.cli import app

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BAD = REPO / "tests" / "specs" / "bad"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_validate_ok():
    result = invoke("validate", EXAMPLES / "digits.yaml", EXAMPLES / "lenet5.yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{EXAMPLES / 'digits.yaml'}: OK (digits-cnn, multiclass, 10 classes)",
        f"{EXAMPLES / 'lenet5.yaml'}: OK (lenet5, multiclass, 10 classes)",
    ]
    assert result.stderr == ""


def test_validate_reports_every_error_as_file_line_col():
    bad = BAD / "multiple-errors.yaml"
    result = invoke("validate", EXAMPLES / "digits.yaml", bad)
    assert result.exit_code == 1
    assert "digits.yaml: OK" in result.stdout  # the good file is still checked
    lines = result.stderr.splitlines()
    assert len(lines) == 5
    for line in lines:
        assert re.match(rf"{re.escape(str(bad))}:\d+:\d+: \S+: ", line), line
    assert f"{bad}:17:29: model.layers[0].filters: must be greater than 0 (got 0)" in lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "name",
    ["yaml-syntax", "yaml-empty", "yaml-not-utf8", "unknown-layer-type", "residual-unmatchable", "tune-value-invalid"],
)
def test_validate_never_shows_a_traceback(name):
    result = invoke("validate", BAD / f"{name}.yaml")
    assert result.exit_code == 1
    assert re.match(rf"{re.escape(str(BAD / name))}\.yaml:\d+:\d+: ", result.stderr)
    assert "Traceback" not in result.output


def test_validate_missing_file(tmp_path: Path):
    result = invoke("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file"


def test_validate_folder_source_without_data_says_so(tmp_path: Path):
    spec = tmp_path / "shapes.yaml"
    shutil.copy(EXAMPLES / "shapes.yaml", spec)
    result = invoke("validate", spec)
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "unknown number of classes" in result.stdout


def _two_images_and_a_spec(root: Path, images: Path, source: str) -> Path:
    """``images``/a/1.png, ``images``/b/2.png, and ``root``/s.yaml (binary) reading ``source``."""
    from PIL import Image

    for name in ("a/1.png", "b/2.png"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(images / name)
    spec = root / "s.yaml"
    spec.write_text(
        f"version: 1\ntask: binary\ndata:\n  source: {source}\n"
        "input: {channels: 1, size: [8, 8]}\nmodel:\n  layers: [{type: flatten}]\n"
    )
    return spec


def test_validate_refuses_the_csv_rows_train_would(tmp_path: Path):
    """A CSV listing a file twice: validate said OK (it reads the labels only), train refused it."""
    spec = _two_images_and_a_spec(tmp_path, tmp_path, "{type: csv, path: labels.csv}")
    (tmp_path / "labels.csv").write_text("path,label\na/1.png,a\nb/2.png,b\na/1.png,b\n")
    result = invoke("validate", spec)
    assert result.exit_code == 1 and "OK" not in result.stdout
    assert "labels.csv:4: a/1.png is listed twice (first on line 2)" in result.stderr, result.stderr
    (tmp_path / "labels.csv").write_text("path,label\na/1.png,a\nb/2.png,b\n")
    assert invoke("validate", spec).exit_code == 0


def test_validate_refuses_the_folder_listing_train_would(tmp_path: Path):
    """A link that puts one class's images into another, and a class of empty files: validate said
    OK to both (it looked for one image file per class), train refused them."""
    spec = _two_images_and_a_spec(tmp_path, tmp_path / "data", "{type: folder, path: data}")
    os.symlink("../a", tmp_path / "data" / "b" / "more")
    result = invoke("validate", spec)
    assert result.exit_code == 1 and "OK" not in result.stdout
    assert "b/more/1.png is" in result.stderr and "reached through symbolic links in two places" in result.stderr
    os.unlink(tmp_path / "data" / "b" / "more")
    assert invoke("validate", spec).exit_code == 0
    (tmp_path / "data" / "b" / "2.png").write_bytes(b"")
    result = invoke("validate", spec)
    assert result.exit_code == 1 and "class folder without images" in result.stderr and "empty files" in result.stderr


def test_validate_refuses_a_broken_link_when_a_bad_image_is_an_error(tmp_path: Path):
    """``on_bad_image: error``: validate said OK, train's first read refused the broken link."""
    spec = _two_images_and_a_spec(tmp_path, tmp_path / "data", "{type: folder, path: data}\n  on_bad_image: error")
    os.symlink("nowhere.png", tmp_path / "data" / "a" / "broken.png")
    result = invoke("validate", spec)
    assert result.exit_code == 1 and "broken.png: broken link" in result.stderr and "on_bad_image" in result.stderr
    spec.write_text(spec.read_text().replace("\n  on_bad_image: error", ""))
    assert invoke("validate", spec).exit_code == 0  # skip (the default): train names it and goes on


def test_validate_into_a_reader_that_left_exits_141_without_a_traceback():
    """``convspec validate SPEC | head -0``: a 57-line traceback and exit 1 (validate alone lacked
    the handler every other command has)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "convspec.compiler", "validate", str(EXAMPLES / "digits.yaml")],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_validate_counts_an_unreadable_class_folder_as_without_images(tmp_path: Path, monkeypatch):
    """train finds no images in a folder it cannot read; validate said OK to it."""
    from PIL import Image

    from convspec.specs import SpecError, classes, load_spec_text

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / name / "1.png")
    real = os.scandir

    def no_permission(path="."):
        if os.fspath(path) == str(tmp_path / "b"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(classes.os, "scandir", no_permission)
    text = (
        f"version: 1\ntask: binary\ndata:\n  source: {{type: folder, path: {tmp_path}}}\n"
        "input: {channels: 1, size: [8, 8]}\nmodel:\n  layers: [{type: flatten}]\n"
    )
    with pytest.raises(SpecError, match=r"class folder without images in .*: b "):
        load_spec_text(text, "s.yaml")


def test_summary_table_has_totals():
    result = runner.invoke(app, ["summary", str(EXAMPLES / "lenet5.yaml")], terminal_width=160)
    assert result.exit_code == 0, result.output
    total = [line for line in result.stdout.splitlines() if "total" in line]
    assert len(total) == 1
    assert "61,706" in total[0] and "416,520" in total[0] and "(10)" in total[0]
    for shape in ("(6, 28, 28)", "(16, 5, 5)", "(400)", "(120)", "(84)"):
        assert shape in result.stdout


def test_summary_with_set_and_with_errors():
    result = runner.invoke(
        app, ["summary", str(EXAMPLES / "lenet5.yaml"), "--set", "model.layers.5.units=60"], terminal_width=160
    )
    assert result.exit_code == 0, result.output
    assert f"{61_706 - 60 * (400 + 1 + 84):,}" in result.stdout
    result = invoke("summary", EXAMPLES / "lenet5.yaml", "--set", "model.layers.0.kernel=40")
    assert result.exit_code == 1
    assert "model.layers[0]" in result.stderr and "too small" in result.stderr
    assert "Traceback" not in result.output


def test_summary_of_a_folder_spec_without_data_notes_the_head(tmp_path: Path):
    spec = tmp_path / "shapes.yaml"
    shutil.copy(EXAMPLES / "shapes.yaml", spec)
    result = runner.invoke(app, ["summary", str(spec)], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "196,064" in result.stdout and "not readable" in result.stdout


def test_schema_to_stdout_and_to_a_file(tmp_path: Path):
    result = invoke("schema")
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    out = tmp_path / "sub" / "convspec.schema.json"
    result = invoke("schema", "--out", out)
    assert result.exit_code == 0
    assert json.loads(out.read_text("utf-8")) == printed
    assert str(out) in result.stdout


# ------------------------------------------------------- the real entry point


def convspec_command() -> list[str]:
    script = shutil.which(
        "convspec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    return [script] if script else [sys.executable, "-m", "convspec.compiler"]


def test_entry_point_validates_and_fails_cleanly(tmp_path: Path):
    ok = subprocess.run(
        [*convspec_command(), "validate", str(EXAMPLES / "digits.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "digits.yaml: OK" in ok.stdout
    bad = subprocess.run(
        [*convspec_command(), "validate", str(BAD / "negative-filters.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"{BAD / 'negative-filters.yaml'}:12:29: model.layers[0].filters: ")
    assert "Traceback" not in bad.stdout + bad.stderr


def test_validate_does_not_import_torch(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "convspec.compiler", "validate", str(EXAMPLES / "digits.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "convspec.specs" in imported and "convspec.compiler.cli" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "torchvision", "onnx", "onnxruntime", "optuna"))
    assert not heavy, heavy
