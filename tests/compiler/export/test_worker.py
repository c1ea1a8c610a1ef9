"""The warm export worker: the same model.onnx as an export in this process, errors, a dead worker, shutdown."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from convspec.compiler.export import onnx as export_onnx_module
from convspec.compiler.export.errors import ExportError
from convspec.compiler.export.worker import ENV, ExportWorker, export_run, warm_exporter
from convspec.compiler.run.folder import Run
from convspec.runtime import Predictor
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


@pytest.fixture
def unexported(run_copy) -> Run:
    for stale in ("model.onnx", "export.json"):
        (run_copy.path / stale).unlink(missing_ok=True)
    return run_copy


@pytest.fixture
def worker(unexported):
    w = ExportWorker.start(load_spec(unexported.spec))
    assert w is not None
    yield w
    w.close()


def test_worker_export_equals_in_process(worker, unexported, digits_run, monkeypatch):
    def no_export_here(*_a, **_k):
        raise AssertionError("exported in the parent, not in the worker")

    monkeypatch.setattr(export_onnx_module, "export_model", no_export_here)
    assert worker.begin(unexported)
    lines: list[str] = []
    info = export_run(worker, unexported, lines.append)
    assert info["top1_agreement"] == 1.0 and info["file"] == "model.onnx"
    assert any("parity with PyTorch" in line for line in lines)  # the worker's log reaches the parent's
    assert unexported.onnx.exists() and unexported.export_json.exists()

    ours, theirs = onnx.load(unexported.onnx), onnx.load(digits_run / "model.onnx")
    assert {p.key: p.value for p in ours.metadata_props} == {p.key: p.value for p in theirs.metadata_props}
    images = np.random.default_rng(0).integers(0, 256, (32, 1, 12, 12), dtype=np.uint8)
    a = Predictor(unexported.onnx).predict_arrays(images)
    b = Predictor(digits_run / "model.onnx").predict_arrays(images)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_worker_says_when_it_is_warm_and_still_exports(worker, unexported):
    """``warming()`` never blocks, turns False once the warm-up is over, and the export still answers."""
    deadline = time.monotonic() + 180
    while worker.warming():
        assert time.monotonic() < deadline, "the worker never said it was warm"
        time.sleep(0.05)
    assert not worker.warming() and worker.proc.poll() is None  # warm, and alive
    assert worker.begin(unexported)
    assert export_run(worker, unexported, lambda _m: None)["top1_agreement"] == 1.0


def test_worker_error_is_the_export_error(worker, unexported):
    for ckpt in ("best.pt", "last.pt"):
        (unexported.path / ckpt).unlink()
    assert worker.begin(unexported)
    with pytest.raises(ExportError, match=r"no best\.pt or last\.pt"):
        export_run(worker, unexported, lambda _m: None)
    assert not unexported.onnx.exists()


def test_dead_worker_falls_back_to_this_process(worker, unexported):
    worker.proc.kill()
    worker.proc.wait()
    worker.begin(unexported)  # may or may not reach the pipe: either way the export happens here
    info = export_run(worker, unexported, lambda _m: None)
    assert info["top1_agreement"] == 1.0 and unexported.onnx.exists()


def test_worker_exits_when_its_parent_goes(run_copy):
    w = ExportWorker.start(load_spec(run_copy.spec))
    w.proc.stdin.close()  # what a parent killed with -9 leaves behind
    assert w.proc.wait(timeout=120) == 0
    w.close()


def _state(pid: int, until=None) -> str:
    """The process state letter from /proc (``T``: stopped), or ``gone``; with ``until``, waits up to
    5 s for a state it accepts (a signal is delivered asynchronously: on a busy machine, later)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            state = "gone"
        if until is None or until(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker is paused on Linux only")


def _paused(worker: ExportWorker) -> ExportWorker:
    """Pause ``worker`` as soon as it says it may be (its first message, a fraction of a second in)."""
    deadline = time.monotonic() + 60
    while not worker.pause():
        assert time.monotonic() < deadline and worker.warming(), "the worker never became pausable"
        time.sleep(0.01)
    return worker


@linux_only
def test_a_paused_worker_is_stopped_and_the_export_request_resumes_it(unexported):
    spec = load_spec(unexported.spec)
    worker = ExportWorker.start(spec)
    try:
        assert _paused(worker) and _state(worker.proc.pid, lambda s: s == "T") == "T"
        assert not worker.pause()  # already paused
        worker.resume()
        assert _state(worker.proc.pid, lambda s: s != "T") != "T"
        assert worker.pause()
        assert worker.begin(unexported)  # the request resumes it: the export answers
        info = export_run(worker, unexported, lambda _m: None)
        assert info["top1_agreement"] == 1.0 and unexported.onnx.exists()
        assert not worker.warming() and not worker.pause()  # warm: nothing to pause
    finally:
        worker.close()
    paused = _paused(ExportWorker.start(spec))
    paused.close()  # Ctrl-C while it is paused: killed, not left stopped
    assert paused.proc.poll() is not None


@linux_only
def test_a_paused_worker_dies_with_its_parent(run_copy, tmp_path):
    """A stopped process never reads the end of its stdin: the kernel kills it when the parent dies."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "import time\n"
        "from convspec.compiler.export.worker import ExportWorker\n"
        "from convspec.specs import load_spec\n"
        f"w = ExportWorker.start(load_spec({str(run_copy.spec)!r}))\n"
        "while not w.pause():\n"
        "    time.sleep(0.01)\n"
        "print(w.proc.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(pid) in ("gone", "Z"), f"worker {pid} outlived its parent ({_state(pid)})"


def test_close_stops_a_busy_worker_and_off_switch(run_copy, monkeypatch):
    with warm_exporter(load_spec(run_copy.spec), True) as w:
        proc = w.proc
    assert proc.poll() is not None  # killed mid-warm-up, not left running
    monkeypatch.setenv(ENV, "0")
    with warm_exporter(load_spec(run_copy.spec), True) as w:
        assert w is None


def test_train_exports_in_the_worker(tmp_path, monkeypatch):
    from convspec.compiler.training.loop import train

    def no_export_here(*_a, **_k):
        raise AssertionError("train exported in its own process, not in the warm worker")

    monkeypatch.setattr(export_onnx_module, "export_model", no_export_here)
    spec = load_spec(REPO / "examples" / "digits.yaml", overrides=["training.epochs=1"])
    lines: list[str] = []
    run = train(spec, out=tmp_path, progress=False, log=lines.append)
    assert run.onnx.exists() and any("parity with PyTorch" in line for line in lines)
    results = run.read_results()
    assert results["export"]["top1_agreement"] == 1.0  # the worker's record, merged by the parent
    assert "model.onnx" in run.report.read_text()


def test_an_export_reads_the_images_it_is_handed_and_never_the_data(tmp_path, digits_folder):
    """``convspec train`` hands its export the images it checks on (parity, and INT8's calibration and
    scoring): a data folder gone since training does not matter, and nothing is decoded again."""
    import shutil

    from convspec.compiler.data.loading import load_dataset
    from convspec.compiler.export.onnx import export_images, export_model
    from convspec.compiler.training.loop import train

    data_dir = Path(shutil.copytree(digits_folder, tmp_path / "data"))
    spec = load_spec(
        REPO / "examples" / "digits.yaml",
        overrides=[f"data.source={{type: folder, path: {data_dir}}}", "training.epochs=1"],
    )
    run = train(spec, out=tmp_path / "runs", export=False, progress=False, log=lambda _m: None)
    data = load_dataset(spec, split_file=run.split, log=lambda _m: None)
    fp32, int8 = export_images(spec, data, int8=False), export_images(spec, data, int8=True)
    assert len(fp32.parity) == len(data) and fp32.calibration is None  # 200 images: all of them
    shutil.rmtree(data_dir)

    worker = ExportWorker.start(spec)
    try:
        assert worker.begin(run, images=fp32)
        info = export_run(worker, run, lambda _m: None)
    finally:
        worker.close()
    assert info["images"] == len(data) and info["top1_agreement"] == 1.0 and run.onnx.exists()

    info = export_model(run, int8=True, log=lambda _m: None, images=int8)
    assert info["int8"]["calibration_images"] == len(data.splits["train"]) and run.onnx_int8.exists()
    assert info["int8"]["images"] == len(data.splits["test"])


def test_parity_takes_a_seeded_sample_of_a_large_test_split_and_tops_up_a_small_one():
    from convspec.compiler.export.parity import PARITY_IMAGES, PARITY_MAX, parity_indices

    big = {"test": np.arange(10_000, 15_000), "val": np.arange(100), "train": np.arange(100, 9_000)}
    picked = parity_indices(big, seed=0)
    assert len(picked) == PARITY_MAX and set(picked) <= set(big["test"]) and len(set(picked)) == PARITY_MAX
    assert np.array_equal(picked, parity_indices(big, seed=0))
    small = {"test": np.arange(10), "val": np.arange(10, 20), "train": np.arange(20, 1000)}
    picked = parity_indices(small, seed=0)
    assert len(picked) == PARITY_IMAGES and list(picked[:20]) == list(range(20))


def test_parity_images_are_capped_by_bytes_at_real_sizes():
    """At 3x224x224 a 2,048-image parity sample would be 300 MB gathered (and sent to the worker)."""
    from convspec.compiler.data.dataset import Dataset
    from convspec.compiler.export.onnx import export_images
    from convspec.compiler.export.parity import PARITY_BYTES, PARITY_IMAGES

    spec = load_spec(REPO / "examples" / "digits.yaml")  # export_images reads its training.seed
    for side, want in ((224, PARITY_BYTES // (3 * 224 * 224)), (512, PARITY_IMAGES)):
        n = 3000
        images = np.broadcast_to(np.zeros((1, 3, side, side), np.uint8), (n, 3, side, side))  # no memory
        splits = {"train": np.arange(2000), "val": np.arange(2000, 2200), "test": np.arange(2200, n)}
        data = Dataset(["a", "b"], images, np.zeros(n, np.int64), [f"f{i}" for i in range(n)], splits)
        parity = export_images(spec, data, int8=False).parity
        assert len(parity) == want and 256 <= want <= 445, (side, len(parity))
        assert parity.shape[1:] == (3, side, side)


def test_an_export_request_with_images_never_waits_for_the_warm_up(unexported):
    """The images are more than a pipe holds: ``begin`` hands them to a thread and returns while the
    worker is still warming up (the caller draws its pictures meanwhile); the export then answers."""
    from convspec.compiler.data.loading import load_dataset
    from convspec.compiler.export.onnx import ExportImages

    spec = load_spec(unexported.spec)
    data = load_dataset(spec, split_file=unexported.split, log=lambda _m: None)
    images = ExportImages(parity=np.asarray(data.images))  # 1,797 images, 259 KB: a pipe holds 64 KB
    worker = ExportWorker.start(spec)
    try:
        assert worker.begin(unexported, images=images)
        assert worker.warming(), "begin waited for the warm-up"
        info = export_run(worker, unexported, lambda _m: None, images)
    finally:
        worker.close()
    assert info["images"] == len(data) and info["top1_agreement"] == 1.0 and unexported.onnx.exists()


def test_closing_a_worker_mid_request_leaves_no_thread_behind(unexported):
    from convspec.compiler.data.loading import load_dataset
    from convspec.compiler.export.onnx import ExportImages

    spec = load_spec(unexported.spec)
    data = load_dataset(spec, split_file=unexported.split, log=lambda _m: None)
    worker = ExportWorker.start(spec)
    assert worker.begin(unexported, images=ExportImages(parity=np.asarray(data.images)))
    worker.close()  # Ctrl-C while it warms: the request's thread ends with the pipe
    assert not worker._sender.is_alive() and worker.proc.poll() is not None


def test_no_worker_where_memory_is_short(unexported, monkeypatch):
    """Under 4 GiB of room (a small container) the export runs in the training process; unknown room starts one."""
    from convspec.compiler.export import worker as worker_module

    spec = load_spec(unexported.spec)
    monkeypatch.setattr(worker_module, "available_bytes", lambda: worker_module.MIN_ROOM - 1)
    assert ExportWorker.start(spec) is None
    with warm_exporter(spec, True) as w:
        assert w is None
    monkeypatch.setattr(worker_module, "available_bytes", lambda: None)
    w = ExportWorker.start(spec)
    assert w is not None
    w.close()
    monkeypatch.setenv(ENV, "0")
    monkeypatch.setattr(worker_module, "available_bytes", lambda: 1 << 40)
    assert ExportWorker.start(spec) is None


def test_int8_scoring_reads_the_split_lazily_and_sends_only_its_rows():
    """The INT8 accuracy is scored on the whole test split: it used to be copied at once (750 MB for a
    10 % test split of 50,000 photos at 224 px) and held while the pictures were drawn."""
    import pickle

    from convspec.compiler.data.dataset import Dataset, SplitRows
    from convspec.compiler.export.onnx import export_images

    spec = load_spec(REPO / "examples" / "digits.yaml")
    n = 3000
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    splits = {"train": np.arange(2000), "val": np.arange(2000, 2200), "test": np.arange(2200, n)}
    data = Dataset(["a", "b"], images, np.zeros(n, np.int64), [f"f{i}" for i in range(n)], splits)
    picked = export_images(spec, data, int8=True)
    assert isinstance(picked.scored, SplitRows)  # no copy held
    blob = pickle.dumps(picked, protocol=5)
    rows = len(picked.parity) + len(picked.calibration) + len(picked.scored) + len(picked.timing)
    assert len(blob) <= rows * 3 * 32 * 32 + 65536, (len(blob), rows)  # those rows, never the data set behind them
    back = pickle.loads(blob)
    assert np.array_equal(back.scored, images[splits["test"]])
