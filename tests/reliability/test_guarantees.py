"""Deployment and artifact guarantees: atomic files with normal permissions, train/serve pixel
identity, a thread-safe predictor that does not leak, and a runtime that needs no torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convspec.runtime.files import WriteError, atomic_write, atomic_write_text

from .conftest import DIGITS, probe_model, probe_pixels


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "results.json", '{"old": true}')

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"new": tr')
        raise OSError("disk full")

    with pytest.raises(WriteError, match=r"results.json: cannot write \(disk full\)"):  # typed, one line
        atomic_write(target, half_then_fail)
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_artifacts_get_the_mode_of_a_new_file_not_0600(tmp_path):
    """mkstemp makes 0600 files; a model.onnx must be readable as any file the user writes."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic_write_text(tmp_path / "model.onnx", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    os.chmod(path, 0o640)
    atomic_write_text(path, "y")
    assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode


def test_a_digit_png_is_served_the_pixels_it_was_trained_on(tmp_path):
    """Builtin digits (arrays, in training) and the same digit as an 8-bit PNG (in deployment)."""
    from convspec.compiler.data.loading import load_dataset
    from convspec.runtime import Predictor
    from convspec.specs import load_spec

    spec = load_spec(DIGITS)
    data = load_dataset(spec, log=lambda _m: None)
    ids = [17, 500, 1796]
    rows = [data.files.index(f"digits:{i}") for i in ids]
    from sklearn.datasets import load_digits

    raw = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    paths = []
    for i in ids:
        Image.fromarray(raw[i]).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    p = Predictor(probe_model(tmp_path / "probe.onnx", spec.input.channels, tuple(spec.input.size)), providers="cpu")
    for row, served in zip(rows, probe_pixels(p, paths), strict=True):
        assert np.array_equal(data.images[row], served)


def test_predictor_shared_by_threads_gives_single_threaded_answers(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    from convspec.runtime import Predictor

    p = Predictor(digits_run / "model.onnx", providers="cpu", intra_op_threads=1)
    images = list(np.rint(load_digits().images[:50] * 255 / 16).astype(np.uint8))
    for i in range(0, 50, 2):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
        images[i] = tmp_path / f"{i}.png"
    expected = [(q.label, q.probability) for q in p.predict(images)]
    errors: list[str] = []

    def worker(t: int) -> None:
        for k in range(t, 800, 4):
            i = k % len(images)
            try:
                [q] = p.predict([images[i]])
                if (q.label, q.probability) != expected[i]:
                    errors.append(f"{i}: {q.label} {q.probability} != {expected[i]}")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


RUNTIME_WITHOUT_TORCH = """
import sys
for name in ("torch", "torchvision"):
    sys.modules[name] = None  # import torch now raises ImportError
from convspec.runtime import Predictor
p = Predictor(sys.argv[1], providers="cpu")
[pred] = p.predict([sys.argv[2]])
print("label", pred.label)
sys.argv = ["convspec", "predict", sys.argv[1], sys.argv[2], sys.argv[3], "--format", "csv"]
from convspec.compiler.cli import main
main()
"""


def test_runtime_and_predict_command_work_without_torch(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    Image.fromarray(np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)).save(tmp_path / "zero.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNTIME_WITHOUT_TORCH,
            str(digits_run / "model.onnx"),
            str(tmp_path / "zero.png"),
            str(tmp_path / "broken.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # 1: broken.png is reported; zero.png still predicted
    assert "Traceback" not in proc.stderr and "broken.png" in proc.stderr
    assert proc.stdout.startswith("label ") and str(tmp_path / "zero.png") in proc.stdout


def test_kill_harness_points_are_understood():
    """The crash tests' harness refuses an unknown kill point instead of silently running."""
    harness = Path(__file__).with_name("kill_harness.py")
    proc = subprocess.run(
        [sys.executable, str(harness), "nowhere", "--", "validate", str(DIGITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "unknown kill point" in proc.stderr
