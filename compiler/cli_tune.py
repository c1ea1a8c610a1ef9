"""``convspec tune SPEC``: the command over :func:`convspec.compiler.tuning.tune`.

Imports torch and Optuna only inside the command, so ``convspec --help`` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer


def _user_errors(fn):
    """``cli.user_errors``, looked up at call time.

    Why: cli.py imports this module at its bottom to register the command; importing cli
    here at module level would make importing this module first a circular import.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .cli import user_errors

        return user_errors(fn)(*args, **kwargs)

    return wrapper


@_user_errors
def tune(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Spec file with a tune section.")],
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Trials this process runs (default: tune.trials).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Start no new trial after S seconds.")
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
) -> None:
    """Search the spec's tune.space with Optuna; write best.yaml, trials.csv, plots, and retrain the best."""
    from convspec.compiler.cli import out
    from convspec.compiler.tuning import tune as run_tune

    result = run_tune(
        spec_path,
        trials=trials,
        timeout=timeout,
        storage=storage,
        study_name=study,
        out=out_dir,
        overrides=set_,
        retrain=not no_retrain,
        log=lambda m: out.print(m, markup=False, highlight=False),
    )
    out.print(f"best spec: {result.best_yaml}   (train it with: convspec train {result.best_yaml})", markup=False)
