"""errors.png, roc.png, pr.png, calibration.png from real digits pixels and known probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convspec.compiler.run.plots import plot_calibration, plot_errors, plot_pr, plot_results, plot_roc, worst_mistakes


def digits_uint8():
    """scikit-learn's digits as uint8 ``(1797, 8, 8)`` (x 255 / 16, rounded) and targets (as tests/conftest.py)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255.0 / 16.0).astype(np.uint8), d.target


@pytest.fixture
def test_split():
    pixels, target = digits_uint8()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(target), 60, replace=False)
    y = target[idx]
    logits = rng.normal(size=(60, 10)) + 3.0 * np.eye(10)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return pixels[idx][:, None], y, probs, [str(d) for d in range(10)]


def test_worst_mistakes_most_confident_first(test_split):
    _, y, probs, _ = test_split
    worst = worst_mistakes(y, probs, "multiclass")
    wrong = np.flatnonzero(probs.argmax(1) != y)
    assert len(worst) == len(wrong) and {i for i, _, _ in worst} == set(wrong.tolist())
    assert [p for _, _, p in worst] == sorted((p for _, _, p in worst), reverse=True)
    assert all(pred != y[i] and probs[i, pred] == p for i, pred, p in worst)
    assert len(worst_mistakes(y, probs, "multiclass", max_items=3)) == 3


def test_binary_mistakes_follow_the_threshold():
    y = np.array([0, 1, 1])
    p = np.array([[0.45], [0.4], [0.9]])
    assert [i for i, _, _ in worst_mistakes(y, p, "binary")] == [1]  # 0.4 < 0.5: a missed positive
    assert [i for i, _, _ in worst_mistakes(y, p, "binary", threshold=0.3)] == [0]  # 0.45 >= 0.3: a false alarm


@pytest.mark.slow
def test_all_pictures_are_written(test_split, tmp_path):
    x, y, probs, names = test_split
    paths = plot_results(tmp_path, x, y, probs, names, "multiclass")
    for name, path in paths.items():
        assert path.name == f"{name}.png"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 100
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_binary_curves_and_degenerate_splits(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 50), 0, 1)[:, None]
    for fn in (plot_roc, plot_pr):
        fn(y, p, ["ok", "defect"], "binary", tmp_path / f"{fn.__name__}.png")
        fn(np.zeros(5, int), p[:5], ["ok", "defect"], "binary", tmp_path / f"{fn.__name__}-one.png")  # one class
    plot_calibration(y, p, "binary", tmp_path / "cal.png")
    x = np.zeros((3, 3, 8, 8), np.uint8)  # RGB tiles, and a split without mistakes
    plot_errors(x, np.array([0, 1, 1]), np.array([[0.1], [0.9], [0.8]]), ["ok", "defect"], tmp_path / "none.png")
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_report_links_the_pictures_and_the_threshold(tmp_path):
    from convspec.compiler.run.report import write_report

    for name in ("errors", "roc", "calibration"):  # pr.png missing: not linked
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.png")
    results = {
        "name": "screen",
        "task": "binary",
        "classes": ["ok", "defect"],
        "counts": {"test": {"ok": 5, "defect": 5}},
        "epochs_run": 1,
        "epochs": 1,
        "device": "cpu",
        "precision": "fp32",
        "timings": {"data_s": 0.1, "train_s": 1.0, "images_per_s": 10.0},
        "test": {
            "metrics": {"accuracy": 0.9},
            "per_class": {"classes": {}, "confusion": [[5, 0], [1, 4]]},
        },
        "threshold": {
            "value": 0.31,
            "rule": {"recall": 0.95},
            "test": {"sensitivity": 0.96, "specificity": 0.8},
        },
    }
    write_report(tmp_path / "report.md", results)
    text = (tmp_path / "report.md").read_text()
    assert "![errors](errors.png)" in text and "![calibration](calibration.png)" in text and "pr.png" not in text
    assert "Operating threshold 0.3100 (recall 0.95, chosen on the validation split): test sensitivity 0.9600" in text
    # a fixed number is not "chosen on validation"; without a test split, validation's figures
    results["threshold"] = {"value": 0.3, "rule": 0.3, "validation": {"sensitivity": 0.9, "specificity": 0.7}}
    del results["test"]
    write_report(tmp_path / "report.md", results)
    text = (tmp_path / "report.md").read_text()
    assert "Operating threshold 0.3000 (fixed by export.threshold): validation sensitivity 0.9000" in text
    results["threshold"] = {"value": 0.46, "rule": {"precision": 0.99}, "missed": "no threshold reaches it"}
    write_report(tmp_path / "report.md", results)
    text = (tmp_path / "report.md").read_text()
    assert "(precision 0.99, chosen on the validation split). Target not reached: no threshold reaches it." in text


def test_report_keeps_its_tables_and_lines_whole_for_any_names(tmp_path):
    from convspec.compiler.run.report import write_report

    results = {
        "name": "names",
        "task": "binary",
        "classes": ["ok|fine", "defect"],
        "counts": {"train": {"ok|fine": 3, "defect": 2}},
        "bad_files": [["/data/a\x1b[2J\nb.png", "not an image"], ["/data/tick`.png", "truncated"]],
        "epochs_run": 1,
        "epochs": 1,
        "device": "cpu",
        "precision": "fp32",
        "timings": {"data_s": 0.1, "train_s": 1.0, "images_per_s": 10.0},
    }
    write_report(tmp_path / "report.md", results)
    text = (tmp_path / "report.md").read_text()
    assert "| split | ok\\|fine | defect | total |" in text and "| train | 3 | 2 | 5 |" in text
    assert "- `/data/a\\x1b[2J\\nb.png`: not an image" in text
    assert "- `` /data/tick`.png ``: truncated" in text
    assert "\x1b" not in text


def test_class_names_the_font_cannot_draw_are_one_warning_line(tmp_path):
    """A CJK class name: matplotlib warned once per figure and character, with source lines."""
    import warnings

    from convspec.compiler.run.plots import one_glyph_warning
    from convspec.compiler.run.report import plot_confusion

    lines: list[str] = []
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        with one_glyph_warning(lines.append):
            plot_confusion([[3, 1], [0, 4]], ["猫", "dog"], tmp_path / "a.png", "cats")
            plot_confusion([[3, 1], [0, 4]], ["猫", "dog"], tmp_path / "b.png", "cats")
            warnings.warn("something else", UserWarning, stacklevel=1)  # passes through as it was
    assert [str(w.message) for w in leaked] == ["something else"]
    assert len(lines) == 1 and lines[0].startswith("warning: the plots' font (") and "cannot draw 猫 " in lines[0]
    assert (tmp_path / "a.png").is_file()
