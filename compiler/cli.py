"""The ``convspec`` command: one Typer app, commands registered explicitly.

Commands import torch only inside their bodies; ``validate``, ``summary``, ``schema``,
``predict`` and ``evaluate`` never import it.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from convspec.specs import ConvspecError, SpecError

app = typer.Typer(
    name="convspec",
    help="Declarative CNN image classifiers: YAML spec -> PyTorch -> ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def user_errors(fn):
    """Turn input mistakes into a message on stderr and exit code 1: no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConvspecError as e:
            err.print(str(e), markup=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper


def validate(specs: Annotated[list[Path], typer.Argument(help="Spec files to check.")]) -> None:
    """Check spec files; print every error as FILE:LINE:COL: message."""
    from convspec.specs import load_spec

    failed = False
    for path in specs:
        try:
            spec = load_spec(path)
        except SpecError as e:
            failed = True
            for issue in e.issues:
                err.print(str(issue), markup=False)
            continue
        for warning in spec.warnings:
            err.print(warning.as_warning(), markup=False)
        n = spec.num_classes()
        out.print(
            f"{path}: OK ({spec.name}, {spec.task}, {n if n is not None else 'unknown number of'} classes)",
            markup=False,
        )
    if failed:
        raise typer.Exit(1)


@user_errors
def summary(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Spec file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override KEY=VALUE (YAML value).")] = None,
) -> None:
    """Print the layer table: output shape, parameters and MACs per layer, and totals."""
    from convspec.specs import load_spec

    spec = load_spec(spec_path, overrides=set_)
    from convspec.compiler.backbone_summary import measured_backbones  # torch only for a backbone outside the table

    s = spec.summary(measured_backbones(spec))
    from convspec.specs.shapes import fmt_shape

    table = Table(
        title=escape(f"{spec.name}: input {fmt_shape(s.input_shape)} uint8"), title_justify="left"
    )  # names are user data, not markup
    table.add_column("layer")
    table.add_column("output", justify="right")
    table.add_column("params", justify="right")
    frozen = any(r.frozen for r in s.rows)
    if frozen:
        table.add_column("frozen", justify="right")
    table.add_column("MACs", justify="right")
    for r in s.rows:
        style = "dim" if r.depth else None
        fz = [f"{r.frozen:,}"] if frozen else []
        table.add_row(
            escape("  " * r.depth + r.name), fmt_shape(r.shape), f"{r.params:,}", *fz, f"{r.macs:,}", style=style
        )
    table.add_section()
    fz = [f"{s.frozen:,}"] if frozen else []
    table.add_row("total", fmt_shape(s.output_shape), f"{s.params:,}", *fz, f"{s.macs:,}", style="bold")
    out.print(table)
    if frozen:
        out.print(f"trainable parameters: {s.trainable:,} of {s.params:,}", markup=False)
    for note in s.notes:
        out.print(note, markup=False)
    if s.classes_note:
        out.print(s.classes_note, markup=False)


@user_errors
def schema(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the spec language (for yaml-language-server / VS Code)."""
    from convspec.specs import json_schema_text

    text = json_schema_text()
    if out_file is None:
        sys.stdout.write(text)
        return
    from convspec.runtime.files import atomic_write_text

    atomic_write_text(out_file, text)
    out.print(f"wrote {out_file}", markup=False)


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
    nproc: Annotated[int, typer.Option("--nproc", help="Processes (devices) for DDP; launches torchrun.")] = 1,
    no_export: Annotated[bool, typer.Option("--no-export", help="Skip writing model.onnx.")] = False,
) -> None:
    """Train a spec: writes runs/NAME/ with checkpoints, metrics, plots, report and model.onnx."""
    if spec_path is None and resume is None:
        raise ConvspecError("give a SPEC file, or --resume RUN")
    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConvspecError(f"--device {device}: must be auto, cpu, cuda or cuda:N (as training.device)")
    if nproc > 1:
        from convspec.compiler.launch import launch_torchrun

        raise typer.Exit(launch_torchrun(nproc, sys.argv[1:]))
    from convspec.compiler.training import train as run_training

    run_training(spec_path, out=out_dir, overrides=set_, resume=resume, device=device, export=not no_export)


app.command("validate")(validate)
app.command("summary")(summary)
app.command("schema")(schema)
app.command("train")(train)

from convspec.compiler.cli_tune import tune  # noqa: E402  (torch-free; needs user_errors above)

app.command("tune")(tune)

from convspec.compiler.cli_deploy import evaluate, export, predict  # noqa: E402  (torch only inside export)

app.command("export")(export)
app.command("predict")(predict)
app.command("evaluate")(evaluate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
