"""The training loop: spec -> trained run folder. Reads top to bottom, as nanoGPT's train.py.

Phases, in order: resolve the spec (and the checkpoint when resuming); load the data (decoded
once, into a uint8 cache); make the run folder; build model, augmenter, optimizer and state;
then per epoch: ``train_epoch`` (augment on the device, autocast, clip, step, ``lr_at(step)``),
``validate``, track the best, write metrics and checkpoints, maybe stop early; finally
``finish``: test with the best weights, plots, report, ONNX export.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from convspec.runtime.files import atomic_write_text
from convspec.runtime.threshold import check_choosable
from convspec.specs import ConvspecError, Spec, SpecError, load_spec
from convspec.specs.base import DEVICE_PATTERN
from convspec.specs.loader import locate_issues, revalidate
from convspec.specs.readfile import FileReadError, read_text

from ..data.dataset import Dataset
from ..data.loading import load_dataset
from ..data.split import save_split
from ..export.worker import ExportWorker, warm_exporter
from ..run import checkpoint
from ..run.files import check_run_out, writing
from ..run.folder import Run, discard_new_run, new_run
from . import distributed
from .device import WorkerShare, check_memory, own_rng, placement_for
from .epoch import train_epoch, validate
from .errors import BatchOfOne, TrainingDiverged, TrainingInterrupted
from .finish import Timings, finish
from .progress import Progress, silent, stderr_log
from .records import EpochLog
from .resume import open_checkpoint, resume_spec
from .setup import setup_training
from .tracking import Tracker


def train(
    spec: Spec | str | os.PathLike | None = None,
    out: str | os.PathLike = "runs",
    *,
    overrides: list[str] | None = None,
    resume: str | os.PathLike | None = None,
    device: str | None = None,
    export: bool = True,
    test: bool = True,
    allow_out_in_data: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    dataset: Dataset | None = None,
    tracker_parent: Tracker | None = None,
    exporter: ExportWorker | None = None,
) -> Run:
    """Train a spec (a Spec or a spec file) and write its run folder under ``out``; return the Run.

    ``resume`` a run from its ``last.pt``; ``device`` overrides ``training.device`` (the given Spec is
    not changed); ``test=False`` never looks at the test split (tuning); ``on_epoch`` gets each epoch's
    record; ``dataset`` is decoded data with its split (k-fold); ``allow_out_in_data`` permits an ``out``
    inside the data folder; ``tracker_parent`` nests the trackers' run (tuning); ``exporter`` is an
    export worker already warming up on this spec (else one is started here). Raises a
    ConvspecError for bad input, a diverged loss or Ctrl-C.
    """
    dd = distributed.from_env()
    log = (log or stderr_log()) if dd.is_main else silent  # under torchrun, rank 0 speaks
    run, ckpt = open_checkpoint(resume) if resume is not None else (None, None)
    given = resume_spec(run, ckpt, spec, overrides) if run else _load(spec, overrides, out, allow_out_in_data)
    spec = _with_device(given, device)
    try:
        place = placement_for(spec.training.device, spec.training.precision, dd.local_rank if dd.enabled else None)
    except SpecError as e:  # Why: placement_for has no spec; its issues name this one's file and key
        given = {("training", "device"): f"--device {device}"} if device else {}
        raise SpecError(locate_issues(spec, e.issues, given)) from None
    summary = _summary(spec)
    check_memory(spec, place, summary)
    _check_weights_file(spec, fresh=ckpt is None)
    distributed.init(dd, place.device)
    with own_rng(place), warm_exporter(spec, export and dd.is_main, exporter) as exporter:  # it warms up meanwhile
        t_start = time.perf_counter()
        # data first: bad data must leave no run folder behind
        split_file = str(run.split) if run is not None and run.split.exists() else None
        data = dataset or load_dataset(spec, split_file=split_file, log=log)
        t_data = time.perf_counter() - t_start
        _check_threshold_rule(spec, data, test)
        # a bad training.init: no folder either
        setup, state = setup_training(spec, data, place, dd, fresh=ckpt is None, log=log)
        run = run or _new_run_folder(out, spec, data, dd)
        spec_yaml = spec.to_yaml()  # Why once: dumping the YAML cost 10 ms a checkpoint (two a digits epoch)

        def save(path: Path) -> None:
            if dd.is_main:
                checkpoint.save(path, state.to_checkpoint(spec_yaml, data.class_names, place.device))

        if ckpt is not None:
            _continue(run, state, ckpt, place, spec_yaml, dd.is_main, log)
        else:
            try:
                save(run.last)  # Why: Ctrl-C in epoch 1 still leaves a resumable run
            except BaseException:
                if dd.is_main:
                    discard_new_run(run)
                raise
        try:
            epoch_log = EpochLog(spec, run, is_main=dd.is_main, on_epoch=on_epoch, nested_under=tracker_parent)
        except BaseException:  # a tracker that cannot start (MLflow's store): a fresh run leaves nothing
            if ckpt is None and dd.is_main:
                discard_new_run(run)
            raise

        epochs, stopped_early = spec.training.epochs, False
        t_train, before_s = time.perf_counter(), state.train_s  # before_s: the sessions before a resume
        saved = state.epoch  # the epoch last.pt holds (Ctrl-C inside a save leaves the one before)
        try:
            with (
                Progress(progress and dd.is_main, epochs, setup.steps_per_epoch) as bar,
                epoch_log,
                WorkerShare(place, exporter, _work_macs(summary, spec, data)),  # the same thread count at every step
            ):
                for epoch in range(state.epoch + 1, epochs + 1):
                    record, n = train_epoch(setup, state, epoch, bar)
                    _check_finite(record, run, state.epoch)
                    record.update(validate(setup, state))
                    state.history.append(record)
                    state.epoch = epoch
                    state.train_s, state.images_seen = before_s + time.perf_counter() - t_train, state.images_seen + n
                    if state.monitor.update(record):
                        save(run.best)
                    save(run.last)
                    saved = epoch
                    bar.end_epoch(record)
                    epoch_log(state.history)
                    if distributed.broadcast(dd, state.monitor.should_stop):
                        stopped_early = True
                        log(f"early stopping: {state.monitor.describe()}")
                        break
        except BatchOfOne:
            if ckpt is None and state.epoch == 0 and dd.is_main:
                discard_new_run(run)  # Why: a spec that cannot train leaves nothing, as one validation refuses
            raise
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted; {run.last} holds epoch {saved}. Continue with: convspec train --resume {run}"
            ) from None
        timings = Timings(t_start, t_data, before_s + time.perf_counter() - t_train, state.images_seen)

        _finish(run, setup, state, data, timings, epoch_log, stopped_early=stopped_early, test=test, export=export,
                log=log, worker=exporter)  # fmt: skip
        distributed.shutdown(dd)
        return run


def _new_run_folder(out, spec: Spec, data, dd) -> Run:
    """``out/NAME`` (numbered when taken; rank 0 picks it) with the split and the resolved spec."""
    made = new_run(out, spec.name) if dd.is_main else None
    run = Run(Path(distributed.broadcast(dd, str(made.path) if made else None)), made.made_parent if made else False)
    if dd.is_main:
        try:
            with writing(run.path, "the run folder"):
                save_split(data, run.split)
                atomic_write_text(run.spec, spec.to_yaml())
        except BaseException:
            discard_new_run(run)
            raise
    return run


def _finish(run: Run, setup, state, *args, **kwargs) -> None:
    """:func:`finish`; Ctrl-C there says how to complete the run (all epochs are in last.pt)."""
    try:
        finish(run, setup, state, *args, **kwargs)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted while testing and exporting; {run.last} holds all {state.epoch} epochs. "
            f"Finish with: convspec train --resume {run}"
        ) from None


def _continue(run: Run, state, ckpt, place, spec_yaml: str, is_main: bool, log) -> None:
    """Restore a resumed run's state; its ``spec.yaml`` becomes the spec it now trains.

    Why rewrite it: ``--set training.epochs=N`` on resume is the run's spec from now on (the checks
    let only resumable keys differ); spec.yaml would otherwise keep the old value, and ``compare``
    would show no difference between a 12- and a 14-epoch run.
    """
    state.restore(ckpt, place.device, run.last)
    log(f"resuming {run} after epoch {state.epoch}")
    try:
        written = read_text(run.spec, "spec")
    except FileReadError:  # missing: write it
        written = None
    if is_main and written != spec_yaml:
        with writing(run.spec, "the resolved spec"):
            atomic_write_text(run.spec, spec_yaml)


def _summary(spec: Spec):
    """The spec's shapes and counts, or None where they are unknown here (a backbone outside the table)."""
    try:
        return spec.summary()
    except Exception:  # noqa: BLE001 - a summary that fails only means the sizes are unknown
        return None


def _work_macs(summary, spec: Spec, data) -> float | None:
    """Training's multiply-accumulates (forward and backward, about 3x the forward), None when unknown."""
    macs = summary.macs if summary is not None else 0
    return 3.0 * macs * len(data.splits["train"]) * spec.training.epochs if macs else None


def _check_weights_file(spec: Spec, fresh: bool) -> None:
    """A backbone's ``weights:`` file that does not fit it: refused before the data decodes (a
    resumed run takes every weight from last.pt)."""
    layer = spec.model.layers[0] if spec.model.layers else None
    if fresh and getattr(layer, "type", None) == "backbone":
        from ..model.backbone import check_weights_file

        check_weights_file(layer, spec.input.channels)


def _check_threshold_rule(spec: Spec, data: Dataset, test: bool) -> None:
    """A binary ``export.threshold`` rule the validation split cannot meet: refused before any epoch."""
    if test and spec.task == "binary":
        check_choosable(spec.export.threshold, data.labels[data.splits["val"]])


def _check_finite(record: dict, run: Run, last_good: int) -> None:
    if not math.isfinite(record["train_loss"]):
        raise TrainingDiverged(
            f"epoch {record['epoch']}: the training loss became {record['train_loss']}; {run.last} keeps epoch "
            f"{last_good}. Lower training.optimizer.lr or set training.grad_clip"
        )


def _with_device(spec: Spec, device: str | None) -> Spec:
    """A copy of ``spec`` with ``training.device`` replaced; the caller's Spec is never changed."""
    if device is None:
        return spec
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise ConvspecError(f"device: expected auto, cpu, cuda or cuda:N, as training.device (got {device!r})")
    return spec.model_copy(update={"training": spec.training.model_copy(update={"device": device})})


def _load(spec: Spec | str | os.PathLike | None, overrides: list[str] | None, out, allow_out_in_data: bool) -> Spec:
    """The spec of a new run; ``out`` is checked before any data loads (a bad --out costs seconds)."""
    if spec is None:
        raise ConvspecError("train needs a spec file, or --resume RUN")
    spec = revalidate(spec, overrides) if isinstance(spec, Spec) else load_spec(spec, overrides=overrides)
    check_run_out(out, spec, allow_in_data=allow_out_in_data)
    return spec
