"""Schema, shape, override and tune mistakes through the commands (validate, summary, train, tune).

tests/specs/bad/ checks each rule's message and position through ``load_spec``; these check
the command-line path: exit 1, the message on stderr, no traceback, and no run folder
created for a spec that is wrong.
"""

from __future__ import annotations

import pytest

from .conftest import DIGITS, cli, cli_subprocess, user_error, write

GOOD = DIGITS.read_text("utf-8")
TUNE = (
    GOOD
    + """
tune:
  trials: 2
  metric: val_accuracy
  space:
    training.optimizer.lr: {type: float, low: 0.0005, high: 0.02, log: true}
    model.layers.2.times: {type: int, low: 1, high: 3}
"""
)

# (id, command, spec text, extra arguments, words the message must hold)
CASES = [
    (
        "misspelt-key",
        "validate",
        GOOD.replace("filters: 32", "filtres: 32"),
        [],
        ["spec.yaml:26:", "model.layers[0]", "did you mean 'filters'"],
    ),
    (
        "wrong-type",
        "summary",
        GOOD.replace("filters: 32", "filters: many"),
        [],
        ["spec.yaml:26:", "model.layers[0].filters", "many"],
    ),
    (
        "unknown-layer-type",
        "validate",
        GOOD.replace("type: max_pool", "type: maxpool"),
        [],
        ["spec.yaml:27:", "maxpool", "max_pool"],
    ),
    (
        "dense-not-flat",
        "summary",
        GOOD.replace("{type: global_avg_pool}", "{type: dense, units: 4}"),
        [],
        ["model.layers[3]", "flatten"],
    ),
    (
        "shape-below-one-pixel",
        "train",
        GOOD.replace(
            "{type: max_pool, size: 2}",
            "{type: max_pool, size: 2}\n    - {type: conv, filters: 4, kernel: 9, padding: valid}",
        ),
        [],
        ["spec.yaml:", "model.layers[2]"],
    ),
    (
        "binary-with-ten-classes",
        "train",
        GOOD.replace("task: multiclass", "task: binary"),
        [],
        ["spec.yaml:", "binary", "2 classes"],
    ),
    (
        "normalize-length",
        "validate",
        GOOD.replace("mean: [0.5], std: [0.5]", "mean: [0.5, 0.5, 0.5], std: [0.5]"),
        [],
        ["spec.yaml:18:", "preprocess[0]", "mean"],
    ),
    (
        "set-invalid-value",
        "train",
        GOOD,
        ["--set", "training.epochs=-1"],
        ["--set training.epochs=-1", "greater than 0"],
    ),
    ("set-without-equals", "train", GOOD, ["--set", "training.epochs"], ["--set expects KEY=VALUE"]),
    (
        "set-index-out-of-range",
        "summary",
        GOOD,
        ["--set", "model.layers.99.filters=3"],
        ["model.layers.99", "out of range"],
    ),
    ("set-split-not-summing-to-one", "train", GOOD, ["--set", "data.split.train=0.95"], ["data.split", "sum"]),
    ("bad-device-option", "train", GOOD, ["--device", "tpu"], ["--device tpu", "cuda:N"]),
    ("tune-without-tune-section", "tune", GOOD, [], ["spec.yaml", "no tune section"]),
    (
        "tune-unknown-path",
        "tune",
        TUNE.replace("model.layers.2.times", "model.layers.2.timez"),
        [],
        ["spec.yaml:", "model.layers.2.timez", "not a key"],
    ),
    ("tune-bad-storage", "tune", TUNE, ["--storage", "nosuchdb://x/y"], ["--storage", "nosuchdb"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_spec_mistake_through_the_cli(case, tmp_path):
    _, command, text, extra, words = case
    spec = write(tmp_path / "spec.yaml", text)
    out = ["--out", tmp_path / "runs"] if command in ("train", "tune") else []
    user_error(cli(command, spec, *out, *extra), *words)
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.rglob("*") if p.suffix in (".pt", ".onnx")]


def test_entry_point_subprocess_reports_a_bad_override_without_traceback(tmp_path):
    """The real ``python -m convspec.compiler`` process (not CliRunner): exit 1, message, nothing else."""
    result = cli_subprocess("train", DIGITS, "--out", tmp_path / "runs", "--set", "model.layers.0.filters=-4")
    user_error(result, "--set model.layers.0.filters=-4", "model.layers[0].filters")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
