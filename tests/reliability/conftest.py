"""Helpers for the bad-input corpus: run the CLI, check that a failure is a clean user error.

A clean user error is: exit code 1, a short message on stderr that names what is wrong
(the file, the key or the image) and says what was expected, and no Python traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from convspec.compiler.cli import app

REPO = Path(__file__).resolve().parents[2]
DIGITS = Path(__file__).with_name("digits.yaml")  # a frozen copy of examples/digits.yaml
runner = CliRunner()


def cli(*args, cwd: Path | None = None):
    """``convspec ARGS`` in-process (Typer's CliRunner); a bug's exception propagates to the test."""
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def cli_subprocess(*args, cwd: Path | None = None, timeout: float = 180, limit_memory: int | None = None):
    """``python -m convspec.compiler ARGS`` in a child process (optionally under an address-space limit)."""

    def limits() -> None:
        if limit_memory:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "convspec.compiler", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        preexec_fn=limits if limit_memory else None,
    )


_PEAK = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_with_peak(args: list, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """Run a child process; return its result and its own peak RSS in MB (``wait4``'s rusage).

    Why a small launcher process in between: Linux keeps a process's RSS high-water mark across
    fork and exec, so a child forked straight from this (large) test process would report
    this process's size.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        peak_file = Path(d) / "peak"
        result = subprocess.run(
            [sys.executable, "-c", _PEAK, str(peak_file), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        peak_kb = int(peak_file.read_text()) if peak_file.exists() else 0
    return result, peak_kb / 1024


def user_error(result, *words: str, max_lines: int = 4) -> str:
    """Assert a clean user error that mentions every one of ``words``; return stderr."""
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    stderr = result.stderr
    stdout = result.stdout if isinstance(result.stdout, str) else ""
    assert code == 1, f"exit code {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    said = [ln for ln in stderr.splitlines() if ln.strip()]
    assert said, f"no message at all\nstdout:\n{stdout}"
    # The message is the last line (it may start with its key: "data: every image of class b ..."); before
    # it, only progress lines and warnings (and their indented details) may come.
    lines = [ln for ln in said[:-1] if not ln.startswith(("data:", "warning:", "  "))] + said[-1:]
    assert len(lines) <= max_lines, f"expected one clear message, got {len(lines)} lines:\n{stderr}"
    for word in words:
        assert word.casefold() in stderr.casefold(), f"{word!r} not in:\n{stderr}"
    return stderr


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def tiny_spec(
    source: str,
    *,
    classes: str = "auto",
    task: str = "multiclass",
    size: int = 8,
    channels: int = 1,
    split: str = "{train: 0.5, val: 0.25, test: 0.25, seed: 0}",
    data_extra: str = "",
) -> str:
    """A spec that trains in a blink: one 2-filter conv on 8x8 images, one epoch."""
    return f"""version: 1
task: {task}
classes: {classes}
data:
  source: {source}
  split: {split}
{data_extra}input: {{channels: {channels}, size: [{size}, {size}]}}
model:
  layers:
    - {{type: conv, filters: 2}}
    - {{type: global_avg_pool}}
training: {{epochs: 1, batch_size: 4, device: cpu}}
"""


def save_png(path: Path, value: int = 100, size: tuple[int, int] = (8, 8), mode: str = "L") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(size, value, np.uint8)
    Image.fromarray(a).convert(mode).save(path)
    return path


def image_folder(root: Path, classes=("a", "b"), per_class: int = 4) -> Path:
    """``root/<class>/<i>.png``: class k's images are all grey level 40 + 80 k (plus i)."""
    for k, name in enumerate(classes):
        for i in range(per_class):
            save_png(root / name / f"{i}.png", 40 + 80 * k + i)
    return root


def probe_model(
    path: Path, channels: int = 1, size: tuple[int, int] = (6, 6), resize: str = "stretch", bits_stored: int = 16
) -> Path:
    """An ONNX "model" whose outputs are its input pixels: uint8 (N, C, H, W) -> float (N, C*H*W).

    Its metadata names C*H*W classes ``p0, p1, ...``, so ``Predictor.predict(...).probabilities``
    returns exactly the pixels the runtime fed it: deployment's pixels, observable end to end.
    """
    h, w = size
    n = channels * h * w
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["f"], ["probabilities"], axis=1),
        ],
        "probe",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", channels, h, w])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {
            "convspec.classes": json.dumps([f"p{i}" for i in range(n)]),
            "convspec.task": "multiclass",
            "convspec.channels": str(channels),
            "convspec.input_size": json.dumps([h, w]),
            "convspec.resize": resize,
            **({"convspec.bits_stored": str(bits_stored)} if bits_stored != 16 else {}),
        },
    )
    onnx.save(model, path)
    return path


def probe_pixels(predictor, items) -> list[np.ndarray]:
    """The uint8 (C, H, W) pixels a probe model received for each item."""
    c, h, w = predictor.input_shape
    return [
        np.array(list(p.probabilities.values())).reshape(c, h, w).astype(np.uint8) for p in predictor.predict(items)
    ]


@pytest.fixture
def run_copy(digits_run, tmp_path) -> Path:
    """A private copy of the session's trained digits run (tests may damage it)."""
    dst = tmp_path / "run"
    shutil.copytree(digits_run, dst)
    return dst


def classifier_model(
    path: Path,
    classes=("a", "b"),
    *,
    width: int | str | None = None,
    channels: int = 1,
    size: tuple[int, int] = (8, 8),
    props: dict[str, str] | None = None,
    reshape_to: list[int] | None = None,
) -> Path:
    """A tiny ONNX classifier: uint8 (N, C, H, W) -> softmax over ``width`` outputs (default: one per class).

    Output k scores the mean pixel times k, so brighter images go to later classes. ``width``
    may be a name (a dynamic output width); ``props`` overrides or adds metadata entries
    (values as strings, as hostile files hold them); ``reshape_to`` adds a Reshape to that
    shape before the output, which fails at run time when it does not fit.
    """
    c, (h, w) = channels, size
    k = len(classes) if width is None or isinstance(width, str) else width
    weight = np.tile(np.arange(k, dtype=np.float32) / 255.0, (c * h * w, 1)) / (c * h * w)
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["f"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["soft" if reshape_to else "probabilities"], axis=1),
    ]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.flatten().tolist())]
    if reshape_to:
        nodes.append(helper.make_node("Reshape", ["soft", "shape"], ["probabilities"]))
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [len(reshape_to)], reshape_to))
    out_width = width if isinstance(width, str) else k
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", c, h, w])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", out_width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "convspec.classes": json.dumps(list(classes)),
        "convspec.task": "multiclass",
        "convspec.channels": str(c),
        "convspec.input_size": json.dumps([h, w]),
        "convspec.resize": "stretch",
    }
    meta.update(props or {})
    helper.set_model_props(model, meta)
    onnx.save(model, path)
    return path


# ------------------------------------------------- hostile round 2: a tiny trained run


@pytest.fixture(scope="session")
def tiny_run_master(tmp_path_factory) -> Path:
    """A 1-epoch run of a 2-filter conv on 8 grey 8x8 images, without model.onnx (seconds to train)."""
    from convspec.compiler.training.loop import train

    base = tmp_path_factory.mktemp("tiny-run")
    data = image_folder(base / "data")
    spec = write(base / "tiny.yaml", tiny_spec(f"{{type: folder, path: {data}}}"))
    return train(spec, out=base / "runs", export=False, progress=False, log=lambda _m: None).path


@pytest.fixture
def tiny_run(tiny_run_master, tmp_path) -> Path:
    """A private copy of the tiny run (tests may damage it)."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run_master, dst)
    return dst


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes): to assert that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_only(folder: Path) -> Path:
    """Make ``folder`` read-only for real, or skip (as root, file modes do not stop writes)."""
    folder.chmod(0o555)
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return folder
    (folder / ".probe").unlink()
    folder.chmod(0o755)
    pytest.skip("running as root: a read-only mode does not stop writes (the monkeypatched twin covers it)")
