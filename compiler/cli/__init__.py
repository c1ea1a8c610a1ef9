"""The ``convspec`` command: one Typer app, every command registered explicitly here.

Each group of commands lives in its own module, importable on its own: ``spec`` (validate,
summary, schema), ``deploy`` (predict, evaluate), ``serve`` and ``compare`` never import torch; ``train`` (train,
tune, export) imports it inside the commands.
"""

from __future__ import annotations

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
    app()


if __name__ == "__main__":
    main()
