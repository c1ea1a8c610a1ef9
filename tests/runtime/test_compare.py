"""``convspec compare``: spec differences, test metrics, curves, and bad folders as one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from convspec.runtime.compare import CompareError, compare_runs, flatten, plot_compare

SPEC = """version: 1
name: {name}
task: multiclass
data:
  source: {{type: builtin, name: digits}}
input: {{channels: 1, size: [8, 8]}}
model:
  layers:
  - {{type: conv, filters: {filters}, kernel: 3}}
  - {{type: flatten}}
training:
  epochs: {epochs}
  optimizer: {{type: adamw, lr: {lr}}}
"""


def make_run(root: Path, name: str, *, filters=16, lr=0.001, epochs=3, acc=0.9, results=True) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text(SPEC.format(name=name, filters=filters, lr=lr, epochs=epochs))
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": acc * e / epochs}
        for e in range(1, epochs + 1)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    if results:
        (run / "results.json").write_text(
            json.dumps(
                {
                    "epochs_run": epochs,
                    "timings": {"train_s": 2.5 * epochs, "images_per_s": 1000.0},
                    "test": {"metrics": {"accuracy": acc, "f1": acc - 0.01, "auc": float("nan")}},
                }
            )
        )
    return run


def test_flatten_uses_set_paths():
    assert flatten({"a": {"b": 1, "c": [{"d": 2}, 3]}, "e": []}) == {"a.b": 1, "a.c.0.d": 2, "a.c.1": 3, "e": []}


def test_rows_show_what_differs_and_the_metrics(tmp_path):
    a = make_run(tmp_path, "small", filters=16, acc=0.9)
    b = make_run(tmp_path, "wide", filters=64, lr=0.003, epochs=4, acc=0.95)
    c = compare_runs([a, b])
    assert c.differing == ["model.layers.0.filters", "training.epochs", "training.optimizer.lr"]
    rows = c.rows()
    assert rows[1]["differs"] == {"model.layers.0.filters": 64, "training.epochs": 4, "training.optimizer.lr": 0.003}
    assert rows[1]["metrics"] == {"accuracy": 0.95, "f1": 0.94}  # NaN AUC is not reported
    assert (rows[1]["epochs"], rows[1]["train_s"], rows[1]["images_per_s"]) == (4, 10.0, 1000.0)
    assert json.loads(c.to_json())["runs"][0]["name"] == "small"
    table = list(csv.reader(io.StringIO(c.to_csv())))
    assert table[0][:4] == ["name", "model.layers.0.filters", "training.epochs", "training.optimizer.lr"]
    assert table[2][0] == "wide" and table[2][4] == "0.95"


def test_same_names_are_told_apart_and_unfinished_runs_still_compare(tmp_path):
    a = make_run(tmp_path / "x", "digits")
    b = make_run(tmp_path / "y", "digits", results=False)  # still training: no results.json yet
    rows = compare_runs([a, b]).rows()
    assert [r["name"] for r in rows] == ["x/digits", "y/digits"]
    assert (
        rows[1]["epochs"] == 3 and rows[1]["train_s"] is None and rows[1]["metrics"] == {"accuracy": None, "f1": None}
    )


def test_compare_png(tmp_path):
    c = compare_runs([make_run(tmp_path, "a"), make_run(tmp_path, "b", acc=0.5)])
    with Image.open(plot_compare(c, tmp_path / "out" / "compare.png")) as im:
        assert im.format == "PNG" and im.width > 800


def _replace(path, kind: str) -> None:
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p, "not found"),
        (lambda p: (p.mkdir(), p)[1], "not a run folder (no spec.yaml"),
        (lambda p: (p.write_text("x"), p)[1], "not a folder"),
        (
            lambda p: ((make_run(p.parent, p.name) / "results.json").write_text("{oops"), p)[1],
            "results.json: is not valid JSON (line 1",
        ),
        *(  # a key of the wrong type one level down: a traceback from deep inside compare
            (
                lambda p, doc=doc: ((make_run(p.parent, p.name) / "results.json").write_text(doc), p)[1],
                message,
            )
            for doc, message in (
                ('{"test": {"metrics": "x"}}', "results.json: test.metrics: expected a mapping (got str)"),
                ('{"test": {"metrics": [1, 2]}}', "results.json: test.metrics: expected a mapping (got list)"),
                ('{"timings": {"train_s": "slow"}}', "results.json: timings.train_s: "),
                ('{"classes": "ab"}', "results.json: classes: expected a list (got str)"),
            )
        ),
        *(  # a FIFO or a device in a run file's place: named, never opened (reading one waits forever)
            (
                lambda p, name=name, kind=kind: (_replace(make_run(p.parent, p.name) / name, kind), p)[1],
                f"{name}: is {'a FIFO (named pipe)' if kind == 'fifo' else 'a device'}, not a regular file",
            )
            for name in ("results.json", "metrics.jsonl", "spec.yaml")
            for kind in ("fifo", "dev_zero")
        ),
        (
            lambda p: ((make_run(p.parent, p.name) / "metrics.jsonl").write_text("{}\n{bad\n"), p)[1],
            "metrics.jsonl:2: not a JSON line",
        ),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, setup, message):
    bad = setup(tmp_path / "bad")
    with pytest.raises(CompareError, match=re.escape(message)):
        compare_runs([make_run(tmp_path, "good"), bad])


def test_cli_table_json_and_errors(tmp_path):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", filters=32)
    cmd = [sys.executable, "-m", "convspec.compiler", "compare"]
    wide = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [*cmd, str(a), str(b), "--out", str(tmp_path / "c.png")], capture_output=True, text=True, env=wide
    )
    assert r.returncode == 0, r.stderr
    assert "model.layers.0.filters=32" in r.stdout and "test accuracy" in r.stdout and (tmp_path / "c.png").is_file()
    # 80 columns (a pipe, CI logs): the runs go across and every cell stays whole
    narrow = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([*cmd, str(a), str(b), "--out", str(tmp_path / "c.png")], capture_output=True, text=True,
                       env=narrow)  # fmt: skip
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and max(map(len, lines)) <= 80, r.stdout
    assert re.search(r"┃ +a ┃ +b ┃", lines[2]), lines[2]  # the header row names both runs
    assert re.search(r"model\.layers\.0\.filters +\S +16 +\S +32 ", r.stdout), r.stdout
    assert re.search(r"test accuracy +\S +0\.9000 +\S +0\.9000 ", r.stdout), r.stdout
    # too many runs even for that (40 columns): one small table per run, numbers still whole
    more = [make_run(tmp_path, f"run-{i}", lr=0.001 * (i + 1), acc=0.7278) for i in range(4)]
    r = subprocess.run([*cmd, *map(str, more), "--out", str(tmp_path / "e.png")], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "40"})  # fmt: skip
    assert r.returncode == 0 and max(map(len, r.stdout.splitlines())) <= 40, r.stdout
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("run-")] == [f"run-{i}" for i in range(4)]
    assert r.stdout.count("0.7278") == 4 and re.search(r"training\.optimizer\.lr +\S +0\.004 ", r.stdout)
    r = subprocess.run(
        [*cmd, str(a), str(b), "--format", "json", "--out", str(tmp_path / "d.png")], capture_output=True, text=True
    )
    assert json.loads(r.stdout)["differing"] == ["model.layers.0.filters"]
    r = subprocess.run([*cmd, str(a), str(tmp_path / "nope")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().endswith(
        "not found (expected a run folder written by convspec train)"
    )
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # torch-free
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import convspec.runtime.compare, convspec.compiler.cli.compare\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
