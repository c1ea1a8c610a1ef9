"""The CLI's exit codes: one convention for every command, one line for every failure.

- exit 2: the command line does not parse (unknown command or option, missing argument, a
  value of the wrong type): one plain line ``convspec CMD: ...; see convspec CMD --help``,
  no Click box, no traceback.
- exit 1: convspec refuses a value or an input (``--nproc 0``, a bad spec, ...): one line.
"""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from .conftest import DIGITS, cli, cli_subprocess, image_folder, tiny_spec, user_error, write

BOX = set("╭╮╰╯│─")


def usage_error(result, *words: str) -> str:
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    stderr, stdout = result.stderr, result.stdout or ""
    assert code == 2, f"exit code {code}\n{stdout}\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert not BOX & set(stderr) and "Traceback" not in stderr + stdout, stderr
    assert lines[0].startswith("convspec") and "--help" in lines[0], stderr
    for w in words:
        assert w.casefold() in stderr.casefold(), f"{w!r} not in {stderr}"
    return stderr


USAGE = {
    "unknown-option": (["train", "--epoch", "3", "x.yaml"], ["convspec train:", "no such option --epoch"]),
    "spec-key-as-option": (["train", "--epochs", "3", "x.yaml"], ["--set training.epochs="]),
    "missing-argument": (["predict"], ["convspec predict:", "missing argument", "MODEL"]),
    "unknown-command": (["trian"], ["no such command", "trian"]),
    "wrong-type": (["train", "--nproc", "two", "x.yaml"], ["--nproc"]),
    "option-without-value": (["train", "x.yaml", "--out"], ["--out"]),
}


@pytest.mark.parametrize("case", USAGE, ids=list(USAGE))
def test_usage_errors_are_one_line_and_exit_2(case):
    args, words = USAGE[case]
    usage_error(cli(*args), *words)


def test_usage_errors_from_the_real_entry_point():
    usage_error(cli_subprocess("evaluate", "--format", "yaml", "m.onnx", "d", timeout=60), "convspec evaluate:")


def test_help_and_no_arguments_are_not_errors_in_disguise():
    assert cli("train", "--help").exit_code == 0
    result = cli()
    assert result.exit_code == 2 and "train" in result.stdout  # Click's convention: help, exit 2


@pytest.mark.parametrize("value", ["0", "-1"])
def test_nproc_below_one_is_refused(tmp_path, value):
    stderr = user_error(cli("train", DIGITS, "--nproc", value, "--out", tmp_path / "runs"), "--nproc", "at least 1")
    assert "data:" not in stderr and not (tmp_path / "runs").exists()


OUT_OF_RANGE = [
    (["predict", "m.onnx", "x.png", "--top-k", "0"], "--top-k"),
    (["evaluate", "m", "d", "--batch-size", "-3"], "--batch-size"),
    (["tune", "s.yaml", "--trials", "0"], "--trials"),
    (["tune", "s.yaml", "--timeout", "nan"], "--timeout"),
    (["serve", "m.onnx", "--max-batch", "0"], "--max-batch"),
    (["serve", "m.onnx", "--workers", "0"], "--workers"),
    (["serve", "m.onnx", "--port", "-1"], "--port"),
    (["serve", "m.onnx", "--port", "70000"], "--port 70000: must be at most 65535"),
    (["serve", "m.onnx", "--max-delay-ms", "20000"], "--max-delay-ms 20000.0: must be at most 10000 ms"),
]


@pytest.mark.parametrize("args, word", OUT_OF_RANGE)
def test_option_values_out_of_range_are_user_errors(args, word):
    """Exit 1, one line (the README's table); Click's own range checks exited 2 in another style."""
    user_error(cli(*args), word, "at least" if "at most" not in word else "at most")


def test_nproc_2_with_a_bad_spec_is_one_message_from_the_parent(tmp_path):
    result = cli_subprocess(
        "train", DIGITS, "--nproc", "2", "--set", "model.layers.0.filters=-1", "--out", tmp_path / "runs", timeout=60
    )
    stderr = user_error(result, "filters", "greater than 0", max_lines=1)
    assert "ChildFailedError" not in stderr and "torch.distributed" not in stderr
    assert not (tmp_path / "runs").exists()


def test_nproc_2_with_an_unusable_out_or_resume_is_one_message(tmp_path):
    write(tmp_path / "file", "x")
    user_error(cli("train", DIGITS, "--nproc", "2", "--out", tmp_path / "file"), "--out", "is a file", max_lines=1)
    user_error(cli("train", "--resume", tmp_path / "nowhere", "--nproc", "2"), "nowhere", "not found", max_lines=1)


def three_class_model(path) -> None:
    """A tiny ONNX classifier over classes a, b, c (whatever the image, class a wins)."""
    const = helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [2.0, 1.0, 0.0])
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
            helper.make_node("Mul", ["m1", "zero"], ["z"]),
            helper.make_node("Add", ["z", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "three",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            const,
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {
            "convspec.classes": json.dumps(["a", "b", "c"]),
            "convspec.task": "multiclass",
            "convspec.channels": "1",
            "convspec.input_size": "[8, 8]",
            "convspec.resize": "stretch",
        },
    )
    onnx.save(model, path)


def test_evaluate_on_a_subset_of_the_models_classes_is_allowed(tmp_path):
    three_class_model(tmp_path / "m.onnx")
    data = image_folder(tmp_path / "data", classes=("a", "b"))
    result = cli("evaluate", tmp_path / "m.onnx", data, "--format", "json")
    assert result.exit_code == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["images"] == 8 and scored["accuracy"] == pytest.approx(0.5)


def test_train_help_documents_the_data_guard():
    assert "--allow-out-in-data" in cli("train", "--help").stdout


def test_api_train_refuses_out_in_data_like_the_cli(tmp_path):
    from convspec.compiler import train
    from convspec.compiler.run.files import WriteError

    data = image_folder(tmp_path / "data")
    spec = write(tmp_path / "s.yaml", tiny_spec(f"{{type: folder, path: {data}}}"))
    with pytest.raises(WriteError, match="inside the data folder"):
        train(spec, out=data / "runs", export=False, progress=False, log=lambda _m: None)


def test_under_torchrun_each_distinct_error_is_shown_once(monkeypatch, capsys):
    """Rank 0 prints its own error; the launcher adds only other ranks' errors that differ."""
    from pathlib import Path

    from convspec.compiler.training import launch

    def processes(cmd, env):
        folder = Path(env["CONVSPEC_RANK_ERRORS"])
        for rank, text in enumerate(["data.source.path: folder not found", "data.source.path: folder not found"]):
            (folder / f"rank-{rank}.txt").write_text(text)
        (folder / "rank-2.txt").write_text("training.device: cuda:2 is not available")
        return 1

    monkeypatch.setattr(launch.subprocess, "call", processes)
    assert launch.launch_torchrun(3, ["train", "s.yaml", "--nproc", "3"]) == 1
    assert capsys.readouterr().err.splitlines() == ["rank 2: training.device: cuda:2 is not available"]


def test_half_precision_without_a_gpu_names_the_spec_file(tmp_path):
    """``precision: bf16`` on ``device: auto`` where there is no GPU: refused before any data loads,
    naming the spec file (the message said ``<spec>``); with ``device: cpu`` validation refuses it."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bf16 trains")
    spec = tmp_path / "half.yaml"
    spec.write_text(DIGITS.read_text())
    args = ("train", spec, "--set", "training.precision=bf16", "--out", tmp_path / "runs")
    err = user_error(cli(*args), "half.yaml", "bf16 needs a CUDA device")
    assert "<spec>" not in err and not (tmp_path / "runs").exists()


def test_device_errors_at_train_time_point_at_the_key_or_name_the_option(tmp_path):
    """What only training can check (no GPU here) is ``FILE:LINE:COL`` when the file says it, and
    names ``--device`` or leaves out the position when an option or ``--set`` gave the value."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: cuda trains")
    spec = tmp_path / "gpu.yaml"
    spec.write_text(DIGITS.read_text().replace("training:\n", "training:\n  device: cuda\n", 1))
    line = spec.read_text().splitlines().index("  device: cuda") + 1
    out = ("--out", tmp_path / "runs")
    user_error(cli("train", spec, *out), f"{spec}:{line}:11: training.device: device 'cuda' asked for")
    user_error(cli("train", spec, "--device", "cuda:1", *out), f"{spec} (--device cuda:1): training.device:")
    err = user_error(cli("train", spec, "--device", "cpu", "--set", "training.precision=fp16", *out), "fp16")
    assert err.strip().startswith(f"{spec}: training.precision: precision fp16 needs a CUDA device"), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_reader_that_leaves_ends_training_as_sigpipe_would_and_keeps_last_pt(tmp_path):
    """``convspec train ... 2>&1 | head``: Rich exited 1 (convspec's "refused input") with nothing
    said. Now 141 (128 + SIGPIPE) like any Unix tool, with last.pt kept for --resume."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "convspec.compiler", "train", str(DIGITS), "--out", str(tmp_path),
         "--set", "training.epochs=200", "--no-export"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    for line in proc.stderr:
        if line.startswith("epoch 1/"):
            break
    proc.stderr.close()  # the reader leaves, as head does after its lines
    assert proc.wait(timeout=120) == 141
    assert (tmp_path / "digits-cnn" / "last.pt").is_file()
