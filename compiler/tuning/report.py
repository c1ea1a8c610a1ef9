"""What a study shows a person: the Rich table of trials, trials.csv, history.png, importance.png."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

from convspec.runtime.files import atomic_write, atomic_write_text


def trial_row(ft) -> dict[str, Any]:
    state = ft.state.name
    note = ft.user_attrs.get("error") or ""
    if state == "PRUNED" and not note:
        note = f"pruned at epoch {ft.user_attrs['pruned_at']}" if "pruned_at" in ft.user_attrs else "pruned"
    elif state == "COMPLETE" and "best_epoch" in ft.user_attrs:
        note = f"best epoch {ft.user_attrs['best_epoch']}"
    dur = ft.duration.total_seconds() if ft.duration else None
    values = ft.user_attrs.get("values") if isinstance(ft.user_attrs.get("values"), dict) else dict(ft.params)
    return {
        "number": ft.number,
        "state": state,
        "value": ft.value,
        "values": values,
        "seconds": dur,
        "note": note,
        "run": ft.user_attrs.get("run"),
    }


def trial_line(ft, metric: str) -> str:
    r = trial_row(ft)
    head = f"trial {r['number']}: "
    secs = f" in {r['seconds']:.1f} s" if r["seconds"] is not None else ""
    if r["state"] == "COMPLETE":
        return head + f"{metric} {r['value']:.4f} ({fmt_values(r['values'])}){secs}"
    return head + f"{r['state'].lower()} ({fmt_values(r['values'])}){secs}" + (f": {r['note']}" if r["note"] else "")


def trials_table(rows: list[dict], metric: str, best_number: int = -1):
    """A Rich table: number, state, value, one column per tuned path, and a note."""
    from rich.table import Table

    paths = list(dict.fromkeys(p for r in rows for p in r["values"]))
    table = Table(title=f"trials ({counts_text(rows)}); * best", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("state")
    table.add_column(metric, justify="right")
    for p in paths:
        table.add_column(p, justify="right")
    table.add_column("s", justify="right")
    table.add_column("note")
    for r in rows:
        mark = "*" if r["number"] == best_number else ""
        table.add_row(
            f"{r['number']}{mark}",
            r["state"].lower(),
            "" if r["value"] is None else f"{r['value']:.4f}",
            *(_fmt(r["values"].get(p, "")) for p in paths),
            "" if r["seconds"] is None else f"{r['seconds']:.1f}",
            r["note"][:160],
            style="bold" if mark else None,
        )
    return table


def render(renderable, width: int = 160) -> str:
    """A Rich renderable as plain text (for ``log`` callables such as ``print``)."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False).print(renderable)
    return buf.getvalue().rstrip("\n")


def write_csv(trials, path: Path) -> Path:
    """Optuna's ``trials_dataframe()`` columns, written without pandas."""
    params = list(dict.fromkeys(p for ft in trials for p in ft.params))
    attrs = list(dict.fromkeys(a for ft in trials for a in ft.user_attrs))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "number",
            "value",
            "datetime_start",
            "datetime_complete",
            "duration",
            *(f"params_{p}" for p in params),
            *(f"user_attrs_{a}" for a in attrs),
            "state",
        ]
    )
    for ft in trials:
        w.writerow(
            [
                ft.number,
                "" if ft.value is None else repr(float(ft.value)),
                ft.datetime_start or "",
                ft.datetime_complete or "",
                ft.duration or "",
                *(_csv_cell(ft.params.get(p, "")) for p in params),
                *(_csv_cell(ft.user_attrs.get(a, "")) for a in attrs),
                ft.state.name,
            ]
        )
    return atomic_write_text(path, buf.getvalue())


def write_plots(optuna, study, folder: Path, rows: list[dict]) -> dict[str, str | None]:
    """history.png and importance.png; returns name -> None (written) or why it was skipped."""
    from ..run.plots import pyplot

    plt = pyplot()
    from optuna.visualization import matplotlib as ovm

    done: dict[str, str | None] = {}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    plots = {
        "history.png": (ovm.plot_optimization_history, "no complete trial" if not complete else None),
        "importance.png": (ovm.plot_param_importances, "needs >= 2 complete trials" if len(complete) < 2 else None),
    }
    for name, (plot, why) in plots.items():
        if why is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. "importances will be equal" on a tiny study
                    ax = plot(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                atomic_write(folder / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
                plt.close(fig)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                # e.g. every complete trial has the same values: importances are undefined
                why = _one_line(str(e)) or type(e).__name__
                plt.close("all")
        done[name] = why
    return done


# ------------------------------------------------------------------------ helpers


def counts_text(rows: list[dict]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in state_counts(rows).items())


def state_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return counts


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def fmt_values(values: dict[str, Any]) -> str:
    """``lr=0.003, batch_size=64, model.layers.2.times=2``: last key where it is unambiguous."""
    last = [p.rsplit(".", 1)[-1] for p in values]
    return ", ".join(
        f"{k if last.count(k) == 1 and not k.isdigit() and k not in _VAGUE else p}={_fmt(v)}"
        for (p, v), k in zip(values.items(), last, strict=True)
    )


_VAGUE = {"times", "filters", "units", "rate", "kernel", "size", "type"}  # say which layer


def _csv_cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())
