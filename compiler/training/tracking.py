"""Experiment trackers: ``training.loggers: [tensorboard, mlflow]``.

- ``tensorboard``: event files under ``RUN/tensorboard/`` (a sub-folder per trial when nested
  under a study): a scalar per metric per epoch, test metrics, the pictures, the spec as text.
- ``mlflow``: a run in ``MLFLOW_TRACKING_URI``, or by default a local store in ``./mlruns``
  (``sqlite:///mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts/``; MLflow 3 no longer
  writes its plain-file store by default): the flattened spec as params, per-epoch and test
  metrics, ``model.onnx``, ``report.md`` and the pictures as artifacts. Tuning trials are
  MLflow runs nested under the study's run.

Both are optional extras (``pip install "convspec[track]"``); a missing one is a clear error
naming the extra. Only rank 0 logs: other ranks get a tracker that does nothing.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convspec.runtime.files import os_reason
from convspec.specs import ConvspecError
from convspec.specs.extras import require

LOGGERS = ("tensorboard", "mlflow")
DEFAULT_MLRUNS = "mlruns"
_PARAM_BATCH = 100  # Why: MLflow's log_batch takes at most 100 params per call
_PARAM_CHARS = 500  # Why: the shortest param-value limit across MLflow versions and stores


class TrackingError(ConvspecError):
    """A tracker that cannot start (an unreachable MLflow server, an unwritable folder)."""


def _numbers(record: dict) -> dict[str, float]:
    """The finite numeric entries of a record (``epoch`` aside)."""
    out = {}
    for k, v in record.items():
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class _TensorBoard:
    """One SummaryWriter to ``log_dir``."""

    def __init__(self, log_dir: Path):
        tb = require("torch.utils.tensorboard", "track", "training.loggers: tensorboard")
        self.log_dir = log_dir
        try:
            self.writer = tb.SummaryWriter(log_dir=str(log_dir))
        except OSError as e:
            raise TrackingError(f"{log_dir}: cannot write TensorBoard events ({e.strerror})") from None
        self._last = 0
        _quiet_writer_thread()

    def __str__(self) -> str:
        return f"TensorBoard events in {self.log_dir}"

    def log_params(self, flat: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in flat.items())
        self.writer.add_text("spec", "| key | value |\n|---|---|\n" + rows, 0)

    def log_epoch(self, record: dict, epoch: int) -> None:
        for k, v in _numbers(record).items():
            self.writer.add_scalar(k, v, epoch)
        self._last = epoch
        self.writer.flush()

    def log_test(self, metrics: dict) -> None:
        for k, v in _numbers(metrics).items():
            self.writer.add_scalar(f"test_{k}", v, self._last)

    def log_image(self, name: str, png: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.writer.add_image(name, pixels, self._last, dataformats="HWC")

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        pass  # TensorBoard has no artifacts; the run folder holds them

    def close(self, status: str) -> None:
        self.writer.add_text("status", status, self._last)
        self.writer.close()


class _MLflow:
    """One MLflow run, through MlflowClient (no global active-run state: nested trials stay separate)."""

    def __init__(self, experiment: str, run_name: str, parent: _MLflow | None, tags: dict[str, str]):
        require("mlflow", "track", "training.loggers: mlflow")
        from mlflow import MlflowClient

        self.uri = parent.uri if parent else tracking_uri()
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            _fail_fast()
            exp = self.client.get_experiment_by_name(experiment) if parent is None else None
            if parent is not None:
                experiment_id = parent.experiment_id  # Why: a trial's spec has its own name; it nests in the study's
            elif exp is not None:
                experiment_id = exp.experiment_id
            else:
                experiment_id = self.client.create_experiment(experiment, artifact_location=_artifact_root(self.uri))
            if parent is not None:
                tags = {**tags, "mlflow.parentRunId": parent.run_id}
            self.experiment_id = experiment_id
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        except Exception as e:  # MlflowException, connection errors: the message is what the user needs
            raise TrackingError(f"MLflow at {self.uri}: cannot start a run ({str(e).splitlines()[0][:1000]})") from None
        finally:
            _fail_fast(undo=True)

    def __str__(self) -> str:
        return f"MLflow at {self.uri}"

    def log_params(self, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_PARAM_CHARS]) for k, v in flat.items()]
        for i in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _PARAM_BATCH])

    def log_epoch(self, record: dict, epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in _numbers(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_test(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        found = [Metric(f"test_{k}", v, now, 0) for k, v in _numbers(metrics).items()]
        if found:
            self.client.log_batch(self.run_id, metrics=found)

    def log_image(self, name: str, png: Path) -> None:
        self.client.log_artifact(self.run_id, str(png), artifact_path="plots")

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for p in paths:
            if Path(p).is_file():
                self.client.log_artifact(self.run_id, str(p))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def _reason(e: BaseException) -> str:
    """One line of why a tracker call failed: an OSError's reason and file, else the message's first line."""
    if isinstance(e, OSError):
        return f"{os_reason(e)}: {e.filename}" if e.filename else os_reason(e)
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _quiet_writer_thread() -> None:
    """Keep the traceback of TensorBoard's writer thread off stderr.

    Why: on a write error (a full disk) the thread stores the error for the main thread, whose next
    call raises it (one line, above), and then re-raises it, which Python prints as a traceback.
    """
    try:
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    except ImportError:  # another TensorBoard layout: its traceback shows, nothing breaks
        return
    previous = threading.excepthook
    if getattr(previous, "convspec_quiet", False):
        return

    def hook(args) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    hook.convspec_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the local store ``sqlite:///<cwd>/mlruns/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(DEFAULT_MLRUNS).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = "it is a file" if root.exists() and not root.is_dir() else (e.strerror or str(e)).lower()
        raise TrackingError(
            f"{root}: cannot make MLflow's local store ({what}); run from a writable folder or set MLFLOW_TRACKING_URI"
        ) from None
    return f"sqlite:///{root / 'mlflow.db'}"


#: While a run starts: MLflow's HTTP retries (7, with back-off) and 120-s timeout made a server that
#: refuses at once take 251 s to report; later logging keeps MLflow's (or the user's) settings.
_START = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_SAVED: dict[str, str | None] = {}


def _fail_fast(undo: bool = False) -> None:
    """Set (``undo``: restore) :data:`_START` where the user has not set them."""
    for key, value in _START.items():
        if undo:
            if key in _SAVED and _SAVED.pop(key) is None:
                os.environ.pop(key, None)
        elif key not in os.environ:
            _SAVED[key] = None
            os.environ[key] = value


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside the default local store; elsewhere the server decides."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (Path(DEFAULT_MLRUNS).resolve() / "artifacts").as_uri()


class Tracker:
    """Every logger a spec asks for, behind one interface; does nothing with none (or off rank 0).

    Use as a context manager, or call :meth:`close` with ``FINISHED``, ``FAILED`` or ``KILLED``.
    Errors from a backend while logging are not swallowed: a tracker the user asked for must work.
    Each becomes one :class:`TrackingError` naming the tracker (a full disk under the event files,
    a lost server); closing after another error is best effort, so that error is the one reported.
    """

    def __init__(self, backends: list | None = None, run_path: Path | None = None):
        self.backends = list(backends or [])
        self.run_path = run_path
        self.closed = False

    @property
    def enabled(self) -> bool:
        return bool(self.backends)

    def _backend(self, kind: type):
        return next((b for b in self.backends if isinstance(b, kind)), None)

    @property
    def mlflow_run_id(self) -> str | None:
        b = self._backend(_MLflow)
        return b.run_id if b else None

    @property
    def tensorboard_dir(self) -> Path | None:
        b = self._backend(_TensorBoard)
        return b.log_dir if b else None

    def _each(self, call: str, *args) -> None:
        for b in self.backends:
            try:
                getattr(b, call)(*args)
            except ConvspecError:
                raise
            except Exception as e:  # noqa: BLE001 - OSError, MlflowException, requests' errors: one line
                raise TrackingError(f"{b}: {call.replace('_', ' ')} failed ({_reason(e)})") from None

    def log_params(self, flat_spec: dict[str, Any]) -> None:
        """The flattened spec (``{dotted.key: value}``, e.g. :func:`convspec.runtime.compare.flatten`)."""
        self._each("log_params", flat_spec)

    def log_epoch(self, record: dict, epoch: int) -> None:
        """One metrics.jsonl record: every finite number in it, at step ``epoch``."""
        self._each("log_epoch", record, epoch)

    def log_test(self, metrics: dict) -> None:
        """Test metrics, as ``test_<name>``."""
        self._each("log_test", metrics)

    def log_image(self, name: str, png_path: str | os.PathLike) -> None:
        """A picture (confusion, curves, roc...): a TensorBoard image and an MLflow artifact under plots/."""
        self._each("log_image", name, Path(png_path))

    def log_artifacts(self, paths: Iterable[str | os.PathLike]) -> None:
        """Files (model.onnx, report.md...) as MLflow artifacts; missing files are left out."""
        self._each("log_artifacts", [Path(p) for p in paths])

    def close(self, status: str = "FINISHED") -> None:
        if self.closed:
            return
        self.closed = True
        if status == "FINISHED":
            self._each("close", status)
            return
        for b in self.backends:  # Why best effort: the error that got us here is the one to report
            try:
                b.close(status)
            except Exception:  # noqa: BLE001, S110
                pass

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        self.close(status)


def make_trackers(spec, run_path: str | os.PathLike, *, rank0: bool, nested_under: Tracker | None = None) -> Tracker:
    """The trackers of ``spec.training.loggers`` for the run folder ``run_path``.

    Args:
        spec: the Spec (its ``training.loggers``, ``name``).
        run_path: the run folder (TensorBoard writes to ``RUN/tensorboard/``) or a study's folder.
        rank0: whether this process logs (under DDP only rank 0 does).
        nested_under: the study's Tracker, for a tuning trial: an MLflow run nested under the
            study's, and TensorBoard events in a sub-folder of the study's (``<study tb>/<trial>``).

    Raises:
        MissingExtra: a logger whose library is not installed (names ``convspec[track]``).
        TrackingError: a tracker that cannot start.
    """
    loggers = list(dict.fromkeys(getattr(spec.training, "loggers", []) or []))
    run_path = Path(run_path)
    if not rank0 or not loggers:
        return Tracker([], run_path)
    backends: list = []
    try:
        for name in loggers:
            if name == "tensorboard":
                parent_dir = nested_under.tensorboard_dir if nested_under else None
                backends.append(_TensorBoard(parent_dir / run_path.name if parent_dir else run_path / "tensorboard"))
            elif name == "mlflow":
                parent = nested_under._backend(_MLflow) if nested_under else None
                tags = {"convspec.run": str(run_path.resolve()), "convspec.task": spec.task}
                backends.append(_MLflow(spec.name or run_path.name, run_path.name, parent, tags))
            else:
                raise TrackingError(f"training.loggers: unknown logger {name!r} (known: {', '.join(LOGGERS)})")
    except BaseException:
        for b in backends:
            b.close("FAILED")
        raise
    return Tracker(backends, run_path)
