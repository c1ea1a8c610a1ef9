"""``convspec compare RUN...``: runs side by side (spec differences, test metrics, time) and compare.png.

Torch-free: the work is :mod:`convspec.runtime.compare`.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import err, out, user_errors


class CompareFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
    return str(v)


@user_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Run folders written by convspec train.")],
    fmt: Annotated[CompareFormat, typer.Option("--format", help="table, json or csv.")] = CompareFormat.table,
    out_png: Annotated[
        Path | None, typer.Option("--out", help="Where to draw the validation curves (default: compare.png).")
    ] = None,
) -> None:
    """Compare runs: what differs in their specs, test metrics, epochs, time, images/s; draw compare.png."""
    from convspec.runtime.compare import compare_runs, plot_compare

    comparison = compare_runs(runs)
    if fmt == CompareFormat.json:
        sys.stdout.write(comparison.to_json())
    elif fmt == CompareFormat.csv:
        sys.stdout.write(comparison.to_csv())
    else:
        from rich.measure import Measurement

        def fits(table) -> bool:
            return Measurement.get(out, out.options.update(width=1 << 16), table).maximum <= out.width

        # Why: ten columns squeezed into 80 fold every cell; then runs go across, values down; with
        # too many runs for that, one small table per run
        for layout in (_wide_table, _tall_table):
            table = layout(comparison)
            if fits(table):
                out.print(table)
                break
        else:
            for table in _run_tables(comparison):
                out.print(table)
    png = plot_compare(comparison, out_png or Path("compare.png"))  # Why last: an unwritable place keeps the table
    err.print(f"wrote {png}", markup=False)


TIMES = (("epochs", "epochs"), ("train s", "train_s"), ("images/s", "images_per_s"))


def _wide_table(comparison):
    """One row per run: the differing keys as ``key=value`` lines, then metrics and times."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(comparison.runs)} runs", title_justify="left")
    table.add_column("run", overflow="fold")
    table.add_column("differs" if comparison.differing else "differs (nothing)", overflow="fold")
    for m in comparison.metrics:
        table.add_column(f"test {m}", justify="right")
    for title, _ in TIMES:
        table.add_column(title, justify="right")
    for row in comparison.rows():
        differs = "\n".join(f"{k}={v}" for k, v in row["differs"].items())
        table.add_row(
            escape(row["name"]),
            escape(differs),  # Why escape: keys and values are user data, not Rich markup
            *(_fmt(v) for v in row["metrics"].values()),
            *(_fmt(row[key]) for _, key in TIMES),
        )
    return table


def _value_rows(comparison) -> list[tuple[str, list[str]]]:
    """``(label, one value per run)``: the differing keys as written, then test metrics and times."""
    from rich.markup import escape

    rows = comparison.rows()
    out = [(escape(k), [escape(str(r["differs"].get(k, "-"))) for r in rows]) for k in comparison.differing]
    out += [(f"test {m}", [_fmt(r["metrics"][m]) for r in rows]) for m in comparison.metrics]
    return out + [(title, [_fmt(r[key]) for r in rows]) for title, key in TIMES]


def _tall_table(comparison):
    """One column per run: a row per differing key, test metric and time."""
    from rich.markup import escape
    from rich.table import Table

    same = "" if comparison.differing else "; their specs differ in nothing but the name"
    table = Table(title=f"{len(comparison.runs)} runs{same}", title_justify="left")
    table.add_column("", overflow="fold")
    for row in comparison.rows():
        table.add_column(escape(row["name"]), justify="right", overflow="fold")
    for n, (label, values) in enumerate(_value_rows(comparison)):
        if n == len(comparison.differing) and n:
            table.add_section()
        table.add_row(label, *values)
    return table


def _run_tables(comparison):
    """One two-column table per run (its differing keys, test metrics and times): any width."""
    from rich.markup import escape
    from rich.table import Table

    values = _value_rows(comparison)
    tables = []
    for i, row in enumerate(comparison.rows()):
        table = Table(title=escape(row["name"]), title_justify="left", show_header=False)
        table.add_column(overflow="fold")
        table.add_column(justify="right", overflow="fold")
        for label, per_run in values:
            table.add_row(label, per_run[i])
        tables.append(table)
    return tables
