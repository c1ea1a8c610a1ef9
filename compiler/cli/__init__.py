"""The ``convspec`` command: one Typer app, every command registered explicitly here.

Each group of commands lives in its own module, importable on its own: ``spec`` (validate,
summary, schema), ``deploy`` (predict, evaluate), ``serve`` and ``compare`` never import torch; ``train`` (train,
tune, export) imports it inside the commands.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

import typer

from . import compare, deploy, serve, spec, train
from ._group import OneLineErrors

app = typer.Typer(
    name="convspec",
    cls=OneLineErrors,  # usage errors: one line, exit 2 (see _group)
    help="Declarative CNN image classifiers: YAML spec -> PyTorch -> ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("validate")(spec.validate)
app.command("summary")(spec.summary)
app.command("schema")(spec.schema)
app.command("train")(train.train)
app.command("tune")(train.tune)
app.command("export")(train.export)
app.command("predict")(deploy.predict)
app.command("evaluate")(deploy.evaluate)
app.command("serve")(serve.serve)
app.command("compare")(compare.compare)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if "torch" not in sys.modules:
            raise
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        _exit_now(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))


def _exit_now(code: int) -> None:
    """Exit without tearing the interpreter down, once everything that matters has run.

    Why: with torch, scikit-learn and the exporter loaded, the interpreter's own teardown (module
    clean-up, C++ static destructors) took about a second after ``convspec train`` was done: an
    eighth of the digits run. The atexit handlers (temporary folders, logging) still run, and
    every file convspec writes is closed and renamed before this point.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
