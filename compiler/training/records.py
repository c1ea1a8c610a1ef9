"""Where each epoch's record goes: ``metrics.jsonl`` (rank 0), the trackers, the caller's callback."""

from __future__ import annotations

from convspec.runtime.compare import flatten
from convspec.runtime.files import atomic_write_text, json_text
from convspec.specs import Spec

from ..run.files import writing
from ..run.folder import Run
from .tracking import Tracker, make_trackers


class EpochLog:
    """Writes ``metrics.jsonl`` whole after every epoch and forwards the record to the trackers
    (``training.loggers``; a tuning trial's nested under the study's) and to ``on_epoch``. Only
    rank 0 writes or logs. As a context manager around the epochs, it closes the trackers'
    runs as failed when an epoch raises."""

    def __init__(self, spec: Spec, run: Run, *, is_main: bool, on_epoch=None, nested_under: Tracker | None = None):
        self.run, self.is_main, self.on_epoch = run, is_main, on_epoch
        self.tracker: Tracker = make_trackers(spec, run.path, rank0=is_main, nested_under=nested_under)
        self.tracker.log_params(flatten(spec.to_dict()))

    def __call__(self, history: list[dict]) -> None:
        record = history[-1]
        if self.is_main:
            with writing(self.run.metrics):
                atomic_write_text(self.run.metrics, "".join(json_text(h) + "\n" for h in history))  # small; whole
        self.tracker.log_epoch(record, record["epoch"])
        if self.on_epoch is not None:
            self.on_epoch(record)

    def finish(self, results: dict, pictures: list) -> None:
        """The test metrics, the pictures and the run's files to the trackers; close them."""
        if not self.tracker.enabled:
            return
        self.tracker.log_test(results.get("test", {}).get("metrics", {}))
        for path in pictures:
            if path.exists():
                self.tracker.log_image(path.stem, path)
        self.tracker.log_artifacts([p for p in (self.run.onnx, self.run.report, self.run.results) if p.exists()])
        self.tracker.close("FINISHED")

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """An epoch that raised (Ctrl-C: KILLED, else FAILED) closes the trackers' runs; success
        leaves them open for :meth:`finish`."""
        if exc_type is not None:
            self.tracker.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        return False
