"""``convspec train``, ``tune`` and ``export``: the commands that need torch.

Torch, Optuna and the spec models are imported inside the commands, so ``convspec --help`` and
the torch-free commands start fast.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from convspec.specs import ConvspecError

from ._common import err, out, user_errors
from ._group import at_least

# train and tune share this option
AllowOutInData = Annotated[
    bool, typer.Option("--allow-out-in-data", help="Allow --out inside the data folder (refused by default).")
]


@user_errors
def train(
    spec_path: Annotated[
        Path | None, typer.Argument(metavar="SPEC", help="Spec file (optional with --resume).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override KEY=VALUE (YAML value); repeatable.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path("runs"),
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the run folder RUN from its last.pt.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N (overrides training.device).")
    ] = None,
    nproc: Annotated[
        int, typer.Option("--nproc", callback=at_least(1), help="Processes (devices) for DDP; launches torchrun.")
    ] = 1,
    no_export: Annotated[bool, typer.Option("--no-export", help="Skip writing model.onnx.")] = False,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds", help="K-fold cross-validation: runs/NAME/fold-1..K/ and cv.json (with --resume: continue one)."
        ),
    ] = None,
    allow_out_in_data: AllowOutInData = False,
) -> None:
    """Train a spec: writes runs/NAME/ with checkpoints, metrics, plots, report and model.onnx."""
    from convspec.specs import load_spec
    from convspec.specs.base import DEVICE_PATTERN

    if spec_path is None and resume is None:
        raise ConvspecError("give a SPEC file, or --resume RUN")
    if device is not None and not re.fullmatch(DEVICE_PATTERN, device):
        raise ConvspecError(f"--device {device}: must be auto, cpu, cuda or cuda:N (as training.device)")
    if folds is not None:
        return _train_folds(spec_path, folds, set_, out_dir, resume, device, nproc, allow_out_in_data, not no_export)
    if nproc > 1:
        from ..training.launch import check_before_launch, launch_torchrun

        # Why in the parent: a bad spec or --out is one message, not one per process plus torchrun's traceback
        check_before_launch(spec_path, set_, resume, out_dir, allow_out_in_data=allow_out_in_data)
        raise typer.Exit(launch_torchrun(nproc, sys.argv[1:]))
    spec = None if resume is not None else load_spec(spec_path, overrides=set_)  # before torch: bad specs fail fast
    with _early_exporter(spec, not no_export) as exporter:
        from ..training.loop import train as run_training

        run_training(
            spec if spec is not None else spec_path,
            out=out_dir,
            overrides=set_,
            resume=resume,
            device=device,
            export=not no_export,
            allow_out_in_data=allow_out_in_data,
            exporter=exporter,
        )


def _early_exporter(spec, export: bool):
    """The export worker, started before this process imports torch: both import at once, on two cores.

    Not under torchrun (rank 0 starts its own in the loop) nor when resuming (the spec is the checkpoint's).
    """
    from ..export.worker import warm_exporter

    alone = os.environ.get("WORLD_SIZE", "1") == "1"
    return warm_exporter(spec, export and alone and spec is not None)


def _train_folds(
    spec_path, folds: int, set_, out_dir: Path, resume, device, nproc: int, allow_in_data: bool, export: bool
) -> None:
    if nproc != 1 or (spec_path is None and resume is None):
        raise ConvspecError("--folds K trains a SPEC, or continues a --folds folder with --resume, in one process")
    if folds < 2:
        raise ConvspecError(f"--folds {folds}: must be at least 2")

    from ..training.folds import train_folds

    log = lambda m: err.print(m, markup=False)  # noqa: E731
    train_folds(spec_path, folds, out_dir, export=export, resume=resume, overrides=set_, device=device, log=log,
                allow_out_in_data=allow_in_data)  # fmt: skip


@user_errors
def tune(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Spec file with a tune section.")],
    trials: Annotated[
        int | None,
        typer.Option("--trials", callback=at_least(1), help="Trials this process runs (default: tune.trials)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", callback=at_least(1, " s"), help="Start no new trial after S seconds (>= 1)."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Optuna RDB URL (sqlite:///f.db, postgresql://user:pw@host/db); "
            "processes sharing it share the study. Default: OUT/STUDY-tune/study.db.",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name in the storage (default: the spec's name).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of the tune folder STUDY-tune/.")] = Path(
        "runs"
    ),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override KEY=VALUE (YAML value); repeatable.")
    ] = None,
    no_retrain: Annotated[
        bool, typer.Option("--no-retrain", help="Skip retraining the best spec (e.g. on extra workers).")
    ] = False,
    allow_out_in_data: AllowOutInData = False,
) -> None:
    """Search the spec's tune.space with Optuna; write best.yaml, trials.csv, plots, and retrain the best."""
    from ..tuning.study import tune as run_tune

    result = run_tune(
        spec_path,
        trials=trials,
        timeout=timeout,
        storage=storage,
        study_name=study,
        out=out_dir,
        overrides=set_,
        retrain=not no_retrain,
        allow_out_in_data=allow_out_in_data,
        log=lambda m: out.print(m, markup=False, highlight=False),
    )
    out.print(f"best spec: {result.best_yaml}   (train it with: convspec train {result.best_yaml})", markup=False)


@user_errors
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder written by convspec train.")],
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write model.int8.onnx (static INT8 quantization).")
    ] = False,
) -> None:
    """Export a run to model.onnx (checked against PyTorch); with --int8 also model.int8.onnx."""
    from ..export.onnx import export_onnx

    export_onnx(run, int8=True if int8 else None, log=lambda m: err.print(m, markup=False))
