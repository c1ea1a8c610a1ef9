"""``convspec.runtime.evaluate``: scores on folders and CSVs, class matching, unreadable files.

Fast tests use a hand-written "band" model (class j = brightest band of rows j); the slow
one checks ORT against PyTorch on a trained digits run, image for image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convspec.runtime import DataError, Predictor, evaluate
from convspec.runtime.evaluate import scores

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(tmp_path, band):
    return band.model(tmp_path / "band.onnx")


def test_folder_with_known_answers(model, tmp_path, band):
    root = tmp_path / "data"
    truth = {"a": [0, 0, 1], "b": [1, 1], "c": [2, 2, 2, 0]}  # folder -> band drawn in each image
    for name, bands in truth.items():
        for i, j in enumerate(bands):
            band.save(root / name / f"{i}.png", j)
    r = evaluate(model, root)
    assert r.images == 9 and r.classes == list(band.CLASSES)
    assert r.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert r.accuracy == pytest.approx(7 / 9)
    assert {k: r.per_class["a"][k] for k in ("precision", "recall", "f1", "support")} == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "support": 3,
    }
    assert r.per_class["b"]["precision"] == pytest.approx(2 / 3) and r.per_class["b"]["recall"] == 1.0
    assert r.failures == []
    assert json.dumps(r.to_dict())


def test_csv_and_subset_of_classes(model, tmp_path, band):
    for i, j in enumerate([2, 2, 1]):
        band.save(tmp_path / "img" / f"{i}.png", j)
    (tmp_path / "two.csv").write_text("path,label\nimg/0.png,c\nimg/2.png,b\n")
    r = evaluate(Predictor(model), tmp_path / "two.csv")
    assert r.accuracy == 1.0 and r.per_class["a"]["support"] == 0
    # macro over every class of the model: a is absent and never predicted, so it counts 0
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(2 / 3)


def test_unknown_class_is_a_clear_error(model, tmp_path, band):
    for name in ("a", "zebra"):
        band.save(tmp_path / "data" / name / "0.png", 0)
    with pytest.raises(DataError, match=r"classes the model does not know: zebra \(the model's classes: a, b, c\)"):
        evaluate(model, tmp_path / "data")


def test_a_class_folder_named_in_another_unicode_form_says_so():
    """macOS writes folder names decomposed: the message named "scratch é" as unknown and known."""
    import unicodedata

    from convspec.runtime.evaluate import match_classes

    decomposed = unicodedata.normalize("NFD", "scratch é")
    with pytest.raises(DataError, match="the same letters as a model class in another Unicode form"):
        match_classes([decomposed], ["ok", "scratch é"], "data")
    assert match_classes(["scratch é"], ["ok", "scratch é"], "data") == {"ok": 0, "scratch é": 1}


def test_unreadable_images_are_skipped_and_reported(model, tmp_path, band):
    root = tmp_path / "data"
    band.save(root / "a" / "0.png", 0)
    band.save(root / "b" / "0.png", 1)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    r = evaluate(model, root)
    assert r.images == 2 and r.accuracy == 1.0
    assert [Path(p).name for p, _ in r.failures] == ["broken.png"]


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_batches_scored_by_parallel_workers_give_the_same_scores(model, tmp_path, band, batch):
    """Each worker decodes and scores its own batch: the result must not depend on the batching."""
    root = tmp_path / "data"
    for name, bands in {"a": [0, 0, 1], "b": [1, 1], "c": [2, 2, 2, 0]}.items():
        for i, j in enumerate(bands):
            band.save(root / name / f"{i}.png", j)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    whole = evaluate(model, root).to_dict()
    seen: list[int] = []
    r = evaluate(model, root, batch_size=batch, progress=seen.append)
    assert r.to_dict() == whole and r.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert sum(seen) == 10 and [Path(p).name for p, _ in r.failures] == ["broken.png"]
    assert len(seen) >= -(-10 // batch)  # a progress call a batch (smaller batches when cores outnumber them)


def test_missing_data(model, tmp_path):
    with pytest.raises(DataError, match="not found"):
        evaluate(model, tmp_path / "nothing")


def test_scores_match_sklearn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    r = scores(y, p, ["w", "x", "y", "z"])
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=[0, 1, 2, 3], zero_division=0)
    assert r.confusion.tolist() == confusion_matrix(y, p, labels=[0, 1, 2, 3]).tolist()
    for i, name in enumerate("wxyz"):
        c = r.per_class[name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((prec[i], rec[i], f1[i], sup[i]))
    assert r.f1 == pytest.approx(f1.mean())


# ------------------------------------------------------------------ a trained run (slow)


@pytest.mark.slow
def test_evaluate_onnx_matches_pytorch_on_pngs(digits_run, tmp_path):
    """PNG files of the run's test images: ORT's accuracy (and every prediction) equals PyTorch's."""
    import torch

    from convspec.compiler.data.loading import load_dataset
    from convspec.compiler.model.builder import build_model
    from convspec.compiler.run import checkpoint
    from convspec.specs import load_spec_text

    spec = load_spec_text((digits_run / "spec.yaml").read_text(), "spec.yaml")
    data = load_dataset(spec, split_file=digits_run / "split.json", log=lambda _m: None)
    images, labels = data.arrays("test")
    for i, (a, y) in enumerate(zip(images, labels, strict=True)):
        path = tmp_path / "pngs" / data.class_names[y] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[0]).save(path)
    r = evaluate(digits_run / "model.onnx", tmp_path / "pngs")

    state = checkpoint.load(digits_run / "best.pt")
    model = build_model(spec, class_names=state["class_names"])
    model.load_state_dict(state["model"])
    model.eval()
    # The folder lists files by class, then name: the same order as the test images sorted by (label, index).
    order = sorted(range(len(labels)), key=lambda i: (labels[i], f"{i:03d}"))
    with torch.inference_mode():
        ref = model(torch.from_numpy(images[order])).numpy()
    assert r.images == len(labels)
    assert (r.y_pred == ref.argmax(1)).all()
    assert r.accuracy == pytest.approx(float((ref.argmax(1) == labels[order]).mean()))
    np.testing.assert_allclose(r.probabilities, ref, atol=1e-4)


def test_evaluate_arrays_and_files_refuse_labels_that_are_not_class_indices(model, tmp_path, band):
    """Labels 5..14 for 3 classes scored 0.0 and dropped images from the confusion matrix unseen;
    floats were truncated; a length mismatch or a list surfaced as scikit-learn's or numpy's error."""
    from convspec.runtime.evaluate import evaluate_arrays, evaluate_files

    predictor = Predictor(model)
    images = np.stack([np.asarray(Image.open(band.save(tmp_path / f"{j}.png", j)))[None] for j in (0, 1, 2)])
    assert evaluate_arrays(predictor, images, [0, 1, 2]).accuracy == 1.0  # a list is fine
    for labels, message in (
        ([0, 1, 3], r"labels: 1 outside 0..2, the model's 3 classes \(e.g. 3\)"),
        ([-1, 1, 2], r"labels: 1 outside 0..2"),
        ([0.0, 1.0, 2.0], r"labels: expected integer class indices 0..2 \(got float64 values\)"),
        ([0, 1], r"labels: expected 3 class indices, one per image \(got shape \(2,\)\)"),
    ):
        with pytest.raises(DataError, match=message):
            evaluate_arrays(predictor, images, labels)
    with pytest.raises(DataError, match="no images to evaluate"):
        evaluate_arrays(predictor, images[:0], [])
    files = [str(tmp_path / f"{j}.png") for j in (0, 1, 2)]
    assert evaluate_files(predictor, files, [0, 1, 2]).accuracy == 1.0
    with pytest.raises(DataError, match="expected 3 class indices"):
        evaluate_files(predictor, files, [0, 1])
    # one path, as predict() takes it: one file, not one per character of its name
    [chunk] = list(predictor.scored_chunks(files[1]))
    assert chunk.failures == [] and chunk.probabilities.argmax(1).tolist() == [1]


def test_a_run_folder_given_to_the_api_is_refused_not_scored_as_images(model, tmp_path):
    """``evaluate(model, RUN)``: its plots were scored as images of its sub-folders' classes."""
    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    Image.new("L", (6, 6)).save(run / "a" / "curves.png")
    (run / "split.json").write_text("{}")
    (run / ".convspec-run").write_text("convspec run folder")
    with pytest.raises(DataError, match="a run folder, not labelled images; score its test split with"):
        evaluate(model, run)
