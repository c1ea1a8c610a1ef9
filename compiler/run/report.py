"""What a run shows a person: curves.png, confusion.png and report.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from convspec.runtime.files import atomic_write, atomic_write_text
from convspec.specs.errors import one_line, printable

from .plots import fixed_margins, pyplot


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train against validation."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [h.get(f"{split}_{key}", math.nan) for h in history]
            if any(not math.isnan(y) for y in ys):
                ax.plot(epochs, ys, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fixed_margins(fig, left=0.07, bottom=0.12, top=0.92, wspace=0.2)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    k = len(class_names)
    size = min(3 + 0.5 * k, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = max((max(r) for r in matrix), default=0)
    if k <= 30:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _cell(text: str) -> str:
    """A class name in a Markdown table: a ``|`` in it would start a new column."""
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    """A file name as Markdown code: control characters escaped, backticks in it kept inside."""
    text = one_line(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _threshold_lines(t) -> list[str]:
    """The binary operating threshold: how it was set, and what it gives on test (else validation)."""
    if not isinstance(t, dict) or not isinstance(t.get("value"), (int, float)):
        return []
    rule = t.get("rule")
    how = (
        f"{', '.join(f'{k} {v}' for k, v in rule.items())}, chosen on the validation split"
        if isinstance(rule, dict)
        else "fixed by export.threshold"
    )
    split = next((s for s in ("test", "validation") if isinstance(t.get(s), dict)), None)
    gives = (
        f": {split} sensitivity {_fmt(t[split].get('sensitivity'))}, specificity {_fmt(t[split].get('specificity'))}"
        if split
        else ""
    )
    missed = f" Target not reached: {t['missed']}." if isinstance(t.get("missed"), str) else ""
    return ["", f"Operating threshold {t['value']:.4f} ({how}){gives}.{missed}", ""]


def write_report(path: Path, results: dict[str, Any]) -> None:
    """report.md: data counts, test metrics, per-class scores, timings, bad files, export."""
    r = results
    lines = [f"# {r['name']}", "", f"Task: {r['task']}, {len(r['classes'])} classes: {', '.join(r['classes'])}.", ""]
    lines += [
        "## Data",
        "",
        "| split | " + " | ".join(map(_cell, r["classes"])) + " | total |",
        "|---" * (len(r["classes"]) + 2) + "|",
    ]
    for split, counts in r["counts"].items():  # {split: {class name: count}}
        row = [counts.get(name, 0) for name in r["classes"]]
        lines.append(f"| {split} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    bad = r.get("bad_files", [])
    lines += ["", f"Bad files skipped: {len(bad)}."]
    for p, why in bad:
        lines.append(f"- {_code(p)}: {printable(why)}")
    lines += [
        "",
        "## Training",
        "",
        f"Epochs run: {r['epochs_run']} of {r['epochs']}"
        + (" (early stopping)" if r.get("stopped_early") else "")
        + f"; best epoch {r.get('best_epoch')}.",
        f"Device: {r['device']}, precision {r['precision']}.",
        f"Wall time: data {r['timings']['data_s']:.1f} s, training {r['timings']['train_s']:.1f} s"
        f" ({r['timings'].get('images_per_s', 0):,.0f} images/s).",
        "",
    ]
    lines += init_lines(r.get("init"))
    for n in r.get("normalize") or []:
        show = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
        lines += [f"preprocess[{n['preprocess']}] normalize, mean: auto from the training split: "
                  f"mean {show(n['mean'])}, std {show(n['std'])}.", ""]  # fmt: skip
    test = r.get("test")
    if test:
        lines += ["## Test split", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in test["metrics"].items()]
        lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        for name, c in test["per_class"]["classes"].items():
            scores = f"{c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']}"
            lines.append(f"| {_cell(name)} | {scores} |")
        absent = [name for name, c in test["per_class"]["classes"].items() if not c["support"]]
        if absent:
            lines += [
                "",
                f"No test images of {', '.join(_cell(n) for n in absent)}: "
                f"{'its' if len(absent) == 1 else 'their'} precision, recall and F1 count as 0 in the macro means.",
            ]
        mistakes = test.get("mistakes") or []
        if mistakes:
            lines += ["", f"Worst test mistakes ({len(mistakes)} listed in results.json; the first 20):", "",
                      "| file | true | predicted | probability |", "|---|---|---|---|"]  # fmt: skip
            lines += [
                f"| {_cell(_code(m['file']))} | {_cell(m['true'])} | {_cell(m['predicted'])} | {m['probability']:.4f} |"
                for m in mistakes[:20]
            ]
        lines += ["", "![confusion](confusion.png)", ""]
        lines += [
            f"![{n}]({n}.png)" for n in ("errors", "roc", "pr", "calibration") if (path.parent / f"{n}.png").exists()
        ]
    else:
        lines += ["No test split (data.split.test is 0).", ""]
    lines += _threshold_lines(r.get("threshold"))
    lines += ["![curves](curves.png)", ""]
    exp = r.get("export")
    if exp:
        lines += [
            "## Export",
            "",
            f"`{exp['file']}`: parity with PyTorch on {exp['images']} images: "
            f"top-1 agreement {exp['top1_agreement'] * 100:.2f} %, max |diff| {exp['max_abs_diff']:.2e}.",
        ]
        if exp.get("int8"):
            q = exp["int8"]
            lines.append(
                f"INT8 `{q['file']}`: test accuracy {_fmt(q.get('accuracy'))} (fp32 {_fmt(q.get('fp32_accuracy'))}), "
                f"speed {q.get('speedup', float('nan')):.2f}x fp32."
            )
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


def init_lines(init: dict[str, Any] | None) -> list[str]:
    """report.md's ``training.init`` section: the source, how many tensors it gave, which start fresh."""
    if not init:
        return []
    lines = ["## Initialisation", "", f"From `{init['file']}`: {init['copied']} tensors copied by name and shape."]
    fresh = init["fresh"]
    lines += ["", f"Freshly initialised: {len(fresh)}." if fresh else "Freshly initialised: none."]
    if fresh:
        lines += ["", "| tensor | shape | source shape |", "|---|---|---|"]
        for t in fresh:
            src = t["source_shape"]
            lines.append(f"| `{t['name']}` | {t['shape']} | {src if src is not None else 'not in source'} |")
    if init["unused"]:
        lines += ["", f"Unused tensors of the source: {len(init['unused'])} (" + ", ".join(init["unused"][:20]) + ")."]
    return lines + [""]
