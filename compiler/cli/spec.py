"""``convspec validate``, ``summary`` and ``schema``: the spec commands. Torch-free."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from convspec.specs import SpecError

from ._common import err, out, user_errors


@user_errors
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
        problem = _data_problem(spec, lambda m, shown=path: err.print(f"{shown}: {m}", markup=False))
        if problem:
            failed = True
            err.print(f"{path}: {problem}", markup=False)
            continue
        n = spec.num_classes()
        out.print(
            f"{path}: OK ({spec.name}, {spec.task}, "
            f"{'unknown number of classes' if n is None else f'{n} class' + ('es' if n != 1 else '')})",
            markup=False,
        )
    if failed:
        raise typer.Exit(1)


def _data_problem(spec, log) -> str | None:
    """What ``train`` would refuse in the listing of a folder or CSV source, or None: the same
    listing train makes, without decoding an image (rows listed twice, missing files, files that
    links reach in two classes, unreadable folders...). Why here: the spec's checks read the class
    names only, and validate said OK to data that train then refused. A source that is not there
    yet is train's to report."""
    src = spec.data.source
    if src.type == "builtin" or not Path(src.path).exists():
        return None
    from convspec.runtime.datasets import DataError, list_csv, list_folder, list_split_folders

    try:
        if src.type == "csv":
            samples, _ = list_csv(src.path, src.root, allow_outside_root=src.allow_outside_root)
        elif spec.data.split.from_ == "folders":
            samples = [s for part in list_split_folders(src.path, log=log)[0].values() for s in part]
        else:
            samples, _ = list_folder(src.path, log=log)
    except DataError as e:
        return str(e)
    if spec.data.on_bad_image == "error":  # what train's first read refuses: a broken link, a FIFO, ...
        from convspec.specs.readfile import FileReadError, check_regular

        for path, _ in samples:
            try:
                check_regular(path, "image")
            except FileReadError as e:
                return f"{e} (data.on_bad_image: error)"
    return None


@user_errors
def summary(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Spec file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override KEY=VALUE (YAML value).")] = None,
) -> None:
    """Print the layer table: output shape, parameters and MACs per layer, and totals."""
    from convspec.specs import load_spec

    spec = load_spec(spec_path, overrides=set_)
    from ..model.backbone_summary import measured_backbones  # torch only for a backbone outside the table

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
        row = (escape("  " * r.depth + r.name), fmt_shape(r.shape), f"{r.params:,}", *fz, f"{r.macs:,}")
        table.add_row(*row, style=style)
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

    from ..run.files import WriteError, writing

    if out_file.is_dir():
        example = out_file / "convspec.schema.json"
        raise WriteError(f"--out {out_file}: cannot write (it is a folder); give a file name, e.g. {example}")
    with writing(out_file, "the schema"):
        atomic_write_text(out_file, text)
    out.print(f"wrote {out_file}", markup=False)
