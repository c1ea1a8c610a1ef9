"""Pictures of a model's test results: errors.png, roc.png, pr.png, calibration.png.

Torch-free (numpy, matplotlib with the Agg backend, scikit-learn's curves); every file is
written to a temporary name and renamed. Inputs are what the metrics module takes: true class
indices ``y`` ``(N,)`` and probabilities ``(N, 1)`` (binary) or ``(N, K)``.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from convspec.runtime import metrics
from convspec.runtime.files import atomic_write

MAX_LEGEND = 20  # Why: past this a legend hides the curves; the title keeps the macro figure


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # Why: headless servers; never open a window from a training run
    import matplotlib.pyplot as plt

    return plt


_GLYPH = re.compile(r"Glyph (\d+) .*missing from font\(s\) (.+?)\.?$")


@contextlib.contextmanager
def one_glyph_warning(log: Callable[[str], None]) -> Iterator[None]:
    """Say in one line which characters of the class names the plots' font cannot draw.

    Why: matplotlib warns once per figure and character, each with a source line (8 lines for one
    CJK class name); other warnings pass through as they were.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    missing, fonts = {}, set()
    for w in caught:
        found = _GLYPH.match(str(w.message))
        if found:
            missing.setdefault(chr(int(found.group(1))), None)
            fonts.add(found.group(2))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        log(
            f"warning: the plots' font ({', '.join(sorted(fonts))}) cannot draw {''.join(missing)} in the class names: "
            "drawn as boxes (a font that has them, such as Noto Sans CJK, fixes the pictures; nothing else)"
        )


def fixed_margins(fig, *, left: float, bottom: float, right: float = 0.97, top: float = 0.93, **grid) -> None:
    """Place the axes by fractions of the figure.

    Why not ``tight_layout`` here: it measures every text first (a third of a picture's time), and
    these pictures' labels are fixed words and 0..1 ticks, so known margins fit them.
    """
    fig.subplots_adjust(left=left, bottom=bottom, right=right, top=top, **grid)


def _save(fig, path: str | Path) -> Path:
    plt = pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _task(probs: np.ndarray, task: str | None) -> str:
    if task is not None:
        return task
    return "binary" if np.asarray(probs).ndim == 1 or np.asarray(probs).shape[1] == 1 else "multiclass"


def worst_mistakes(
    y_true: np.ndarray, probs: np.ndarray, task: str | None = None, threshold: float | None = None, max_items: int = 32
) -> list[tuple[int, int, float]]:
    """``(index, predicted class, its probability)`` of the wrong predictions, most confident first."""
    task = _task(probs, task)
    p = metrics.class_probabilities(probs, task)
    pred = metrics.predictions(probs, task, threshold)
    y = np.asarray(y_true, dtype=np.int64)
    wrong = np.flatnonzero(pred != y)
    conf = p[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:max_items]
    return [(int(i), int(pred[i]), float(p[i, pred[i]])) for i in order]


def plot_errors(
    images_uint8: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    max_items: int = 32,
    *,
    task: str | None = None,
    threshold: float | None = None,
) -> Path:
    """errors.png: the worst test mistakes, highest wrong-class probability first.

    Each tile is the uint8 image the model saw, titled ``true -> predicted`` and the predicted
    class's probability. A run without mistakes gets a picture saying so. ``images_uint8``: the
    ``(n, C, H, W)`` images, or anything with ``len`` and ``[i]`` (a lazy ``SplitRows``).
    """
    plt = pyplot()
    images = images_uint8  # Why not np.asarray: a lazy split (data.dataset.SplitRows) reads only the tiles
    worst = worst_mistakes(y_true, probs, task, threshold, max_items)
    if not worst:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no mistakes on the {len(images)} test images", ha="center", va="center")
        return _save(fig, path)
    cols = min(8, len(worst))
    rows = math.ceil(len(worst) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.6 * cols, 4.8), 1.9 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, pred, p) in zip(axes.ravel(), worst, strict=False):
        img = np.asarray(images[i])  # (C, H, W)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
        true = class_names[int(np.asarray(y_true)[i])]
        ax.set_title(f"{true} -> {class_names[pred]}\np={p:.3f}", fontsize=8)
    n = len(worst)
    fig.suptitle(f"worst {n} mistake{'s' if n != 1 else ''}: true -> predicted, its probability", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _one_vs_rest(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], task: str):
    """``(name, binary truth, score)`` per curve: the positive class (binary) or each present class."""
    y = np.asarray(y, dtype=np.int64)
    if task == "binary":
        if len(np.unique(y)) < 2:
            return []
        return [(class_names[1], (y == 1).astype(int), metrics.positive_probability(probs))]
    p = metrics.class_probabilities(probs, task)
    present = set(np.unique(y).tolist())
    if len(present) < 2:
        return []
    return [(class_names[j], (y == j).astype(int), p[:, j]) for j in range(p.shape[1]) if j in present]


def plot_roc(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], task: str, path: str | Path) -> Path:
    """roc.png: ROC curve(s), AUC in the legend (binary: the positive class; multiclass: one-vs-rest)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    curves = _one_vs_rest(y, probs, class_names, task)
    for k, (name, truth, score) in enumerate(curves):
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(truth, score):.3f})" if k < MAX_LEGEND else None)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    auc = metrics.auc(y, probs, task)
    kind = "" if task == "binary" else "one-vs-rest macro "
    ax.set_title(f"ROC, {kind}AUC {auc:.4f}" if curves else "ROC: the split holds a single class")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fixed_margins(fig, left=0.13, bottom=0.1)
    return _save(fig, path)


def plot_pr(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], task: str, path: str | Path) -> Path:
    """pr.png: precision-recall curve(s), average precision (AP) in the legend, one-vs-rest for multiclass."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    curves = _one_vs_rest(y, probs, class_names, task)
    aps = []
    for k, (name, truth, score) in enumerate(curves):
        precision, recall, _ = precision_recall_curve(truth, score)
        ap = float(average_precision_score(truth, score))
        aps.append(ap)
        ax.step(recall, precision, where="post", lw=1.5, label=f"{name} (AP {ap:.3f})" if k < MAX_LEGEND else None)
    if task == "binary" and curves:
        prevalence = float(curves[0][1].mean())
        ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    title = "precision-recall" + (f", {'mean AP' if len(aps) > 1 else 'AP'} {np.mean(aps):.4f}" if aps else "")
    ax.set_title(title if curves else "precision-recall: the split holds a single class")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.05)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize=7)
    fixed_margins(fig, left=0.13, bottom=0.1)
    return _save(fig, path)


def plot_calibration(y: np.ndarray, probs: np.ndarray, task: str, path: str | Path) -> Path:
    """calibration.png: reliability diagram (accuracy against confidence in 15 bins), ECE in the title."""
    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    r = metrics.reliability(y, probs, task)
    ece = metrics.expected_calibration_error(y, probs, task)
    edges = np.asarray(r["edges"])
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    acc = np.nan_to_num(np.asarray(r["accuracy"], dtype=float))
    conf = np.asarray(r["confidence"], dtype=float)
    count = np.asarray(r["count"])
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = count > 0
    ax.bar(centers[used], acc[used], width=width, edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    ax.bar(
        centers[used],
        (conf - acc)[used],
        bottom=acc[used],
        width=width,
        fill=False,
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability (top-label, {len(count)} bins), ECE {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar(centers, count, width=width, edgecolor="black", color="grey")
    hist.set_yscale("log")  # Why: a good model puts nearly all images in the last bin; log shows the others
    # Why plain numbers: counts read better as 1, 10, 100 than 10^k, and mathtext's parser costs 0.15 s to build
    hist.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    hist.yaxis.set_minor_formatter(NullFormatter())
    hist.set_xlabel("confidence (probability of the predicted class)")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    fixed_margins(fig, left=0.13, bottom=0.08, hspace=0.08)
    return _save(fig, path)


def plot_results(
    run_path: str | Path,
    images_uint8: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    task: str,
    *,
    threshold: float | None = None,
) -> dict[str, Path]:
    """All four pictures of a test split into a run folder: ``{"errors", "roc", "pr", "calibration"}`` -> path."""
    run = Path(run_path)
    return {
        "errors": plot_errors(images_uint8, y, probs, class_names, run / "errors.png", task=task, threshold=threshold),
        "roc": plot_roc(y, probs, class_names, task, run / "roc.png"),
        "pr": plot_pr(y, probs, class_names, task, run / "pr.png"),
        "calibration": plot_calibration(y, probs, task, run / "calibration.png"),
    }
