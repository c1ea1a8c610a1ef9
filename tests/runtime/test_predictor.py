"""``convspec.runtime.Predictor``: loading, metadata, input checks, batched prediction, errors.

The models here are written with ``onnx.helper`` (no torch, milliseconds): a "band" model
whose class ``j`` is the brightest band of rows ``j``, so the right answers are known.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from convspec.runtime import (
    ImageError,
    MetadataWarning,
    ModelError,
    Prediction,
    Predictor,
    read_metadata,
)
from convspec.runtime.predictor import cuda_usable

H = W = 6


def band_model(
    path: Path,
    *,
    classes=("a", "b", "c"),
    task="multiclass",
    channels=1,
    metadata=True,
    input_type=TensorProto.UINT8,
    batch="N",
    resize="stretch",
) -> Path:
    """uint8 (N, C, 6, 6) -> probabilities; class j's logit is the mean of rows 2j, 2j+1 (x 0.05)."""
    k = len(classes)
    units = 1 if task == "binary" else k
    w = np.zeros((channels * H * W, units), np.float32)
    for j in range(units):
        band = np.zeros((channels, H, W), np.float32)
        band[:, 2 * j : 2 * j + 2, :] = 1.0
        w[:, j] = band.ravel() * 0.05
    if task == "binary":  # logit = band 1 - band 0
        band0 = np.zeros((channels, H, W), np.float32)
        band0[:, 0:2, :] = 1.0
        band1 = np.zeros((channels, H, W), np.float32)
        band1[:, 2:4, :] = 1.0
        w[:, 0] = (band1 - band0).ravel() * 0.05
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["f"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"])
        if task == "binary"
        else helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "band",
        [helper.make_tensor_value_info("images", input_type, [batch, channels, H, W])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, units])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if metadata:
        props = {
            "convspec.classes": json.dumps(list(classes)),
            "convspec.task": task,
            "convspec.channels": str(channels),
            "convspec.input_size": json.dumps([H, W]),
            "convspec.resize": resize,
            "convspec.layout": "NCHW uint8",
            "convspec.version": "test",
            "convspec.test_metrics": json.dumps({"accuracy": 0.5}),
        }
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def band_image(j: int, channels: int = 1, size=(H, W)) -> np.ndarray:
    """uint8 (C, H, W): rows of band j white, the rest dark."""
    a = np.full((channels, *size), 10, np.uint8)
    a[:, 2 * j : 2 * j + 2, :] = 250
    return a


@pytest.fixture
def model(tmp_path):
    return band_model(tmp_path / "band.onnx")


def test_predict_files_and_arrays(model, tmp_path):
    files = []
    for j in range(3):
        files.append(tmp_path / f"{j}.png")
        Image.fromarray(band_image(j)[0]).save(files[-1])
    p = Predictor(model)
    assert p.classes == ["a", "b", "c"] and p.task == "multiclass" and p.input_shape == (1, 6, 6)
    assert p.info.test_metrics == {"accuracy": 0.5} and p.info.version == "test"
    preds = p.predict(files + [band_image(2)[0]], top_k=2)
    assert [q.label for q in preds] == ["a", "b", "c", "c"]
    assert [q.source for q in preds] == [str(f) for f in files] + ["<array 3>"]
    first = preds[0]
    assert isinstance(first, Prediction) and len(first.top) == 2 and first.top[0] == ("a", first.probability)
    assert first.top[0][1] >= first.top[1][1]
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(first.probabilities) == ["a", "b", "c"]
    assert json.dumps(first.to_dict())  # plain data


def test_predict_resizes_like_training(model, tmp_path):
    """A larger RGB file is converted and resized to the model's (1, 6, 6) by the shared loader."""
    big = np.full((60, 30, 3), 10, np.uint8)
    big[40:60] = 250  # bottom third bright -> band 2 after resizing
    Image.fromarray(big).save(tmp_path / "big.png")
    [pred] = Predictor(model).predict([tmp_path / "big.png"])
    assert pred.label == "c"


def test_single_item_and_batch_array(model):
    p = Predictor(model)
    assert [q.label for q in p.predict(band_image(1))] == ["b"]
    batch = np.stack([band_image(j) for j in (0, 1, 2, 1)])  # (4, 1, 6, 6)
    assert [q.label for q in p.predict(batch, batch_size=3)] == ["a", "b", "c", "b"]


def test_predict_arrays_matches_numpy(model):
    p = Predictor(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 1, H, W), dtype=np.uint8)
    probs = p.predict_arrays(x)
    w = numpy_helper.to_array(onnx.load(model).graph.initializer[0])
    logits = x.reshape(7, -1).astype(np.float64) @ w
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert probs.shape == (7, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_wrong_arrays_name_expected_and_got(model):
    p = Predictor(model)
    with pytest.raises(ModelError, match=r"uint8.*got dtype float32"):
        p.predict_arrays(np.zeros((2, 1, H, W), np.float32))
    with pytest.raises(ModelError, match=r"\(N, 1, 6, 6\).*got \(2, 3, 6, 6\)"):
        p.predict_arrays(np.zeros((2, 3, H, W), np.uint8))
    with pytest.raises(ModelError, match=r"got \(1, 6, 6\)"):
        p.predict_arrays(np.zeros((1, H, W), np.uint8))


def test_binary_model_gives_both_classes(tmp_path):
    p = Predictor(band_model(tmp_path / "bin.onnx", classes=("cat", "dog"), task="binary"))
    out = p.predict_arrays(np.stack([band_image(0), band_image(1)]))
    assert out.shape == (2, 1)
    cat, dog = p.predict([band_image(0), band_image(1)], top_k=5)
    assert (cat.label, dog.label) == ("cat", "dog")
    assert len(cat.top) == 2
    assert cat.probabilities["cat"] + cat.probabilities["dog"] == pytest.approx(1.0)
    assert dog.probability == pytest.approx(float(out[1, 0]), abs=1e-6)


def test_rgb_model(tmp_path):
    p = Predictor(band_model(tmp_path / "rgb.onnx", channels=3))
    assert p.input_shape == (3, 6, 6)
    grey = band_image(2)[0]  # (H, W) grey is replicated to RGB
    assert p.predict([grey])[0].label == "c"


def test_model_without_metadata_numbers_labels_and_warns(tmp_path):
    path = band_model(tmp_path / "plain.onnx", metadata=False)
    with pytest.warns(MetadataWarning, match="no convspec metadata"):
        p = Predictor(path)
    assert p.classes == ["0", "1", "2"] and p.input_shape == (1, 6, 6) and not p.info.has_metadata
    assert p.predict([band_image(1)])[0].label == "1"


def test_fixed_batch_model(tmp_path):
    p = Predictor(band_model(tmp_path / "fixed.onnx", batch=1))
    labels = [q.label for q in p.predict([band_image(j % 3) for j in range(5)], batch_size=4)]
    assert labels == ["a", "b", "c", "a", "b"]


def test_read_metadata(model):
    info = read_metadata(model)
    assert info.classes == ("a", "b", "c") and info.size == (6, 6) and info.resize == "stretch"
    assert info.has_metadata


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "model file not found"),
        (b"", "empty file"),
        (b"hello, I am not a model\n" * 4, "not an ONNX model"),
        (b"PK\x03\x04" + b"\0" * 64, "zip archive"),
    ],
)
def test_bad_model_files(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        Predictor(path)


def test_truncated_model(model):
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        Predictor(model)


def test_png_is_not_a_model(tmp_path):
    Image.fromarray(band_image(0)[0]).save(tmp_path / "x.png")
    with pytest.raises(ModelError, match="not an ONNX model"):
        Predictor(tmp_path / "x.png")


def test_float_input_model_is_refused(tmp_path):
    path = band_model(tmp_path / "float.onnx", input_type=TensorProto.FLOAT)
    with pytest.raises(ModelError, match=r"tensor\(float\).*uint8"):
        Predictor(path)


def test_unreadable_image_skip_or_raise(model, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(band_image(1)[0]).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    p = Predictor(model)
    with pytest.raises(ImageError, match="bad.png"):
        p.predict([good, bad])
    failures: list = []
    preds = p.predict([good, bad, tmp_path / "missing.png", good], on_error="skip", failures=failures)
    assert [q.source for q in preds] == [str(good), str(good)]
    assert [f[0] for f in failures] == [str(bad), str(tmp_path / "missing.png")]
    assert "not found" in failures[1][1]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_batches_decoded_ahead_keep_order_and_failures(model, tmp_path, batch_size):
    """The next batch decodes while this one runs: order, skipped files and the first error stay those of the input."""
    files = []
    for j in range(11):
        files.append(tmp_path / f"{j:02d}.png")
        if j in (4, 7):
            files[-1].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # unreadable, in the 2nd and 3rd batches of 3
        else:
            Image.fromarray(band_image(j % 3)[0]).save(files[-1])
    p = Predictor(model)
    failures: list = []
    preds = p.predict(files, batch_size=batch_size, on_error="skip", failures=failures)
    assert [q.source for q in preds] == [str(f) for j, f in enumerate(files) if j not in (4, 7)]
    assert [q.label for q in preds] == ["abc"[j % 3] for j in range(11) if j not in (4, 7)]
    assert [f[0] for f in failures] == [str(files[4]), str(files[7])]
    with pytest.raises(ImageError, match="04.png"):
        p.predict(files, batch_size=batch_size)


def test_scored_chunks_run_cache_sized_batches_and_keep_every_index(model, tmp_path, monkeypatch):
    """Each worker scores its batch in runs of at most CPU_RUN_BYTES of float input; the
    chunks, in order, account for every item once (kept or failed), with the same scores."""
    import convspec.runtime.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "CPU_RUN_BYTES", 2 * 4 * H * W)  # two 1x6x6 images a run
    p = Predictor(model)
    runs: list[int] = []
    real = p.predict_arrays
    monkeypatch.setattr(p, "predict_arrays", lambda batch: runs.append(len(batch)) or real(batch))
    items = [band_image(j % 3) for j in range(13)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    items.insert(5, tmp_path / "bad.png")
    chunks = list(p.scored_chunks(items, batch_size=5))
    assert [c.start for c in chunks] == list(range(0, 14, 5))
    assert sorted(i for c in chunks for i in c.kept) == [i for i in range(14) if i != 5]
    assert [src for c in chunks for src, _ in c.failures] == [str(tmp_path / "bad.png")]
    assert runs and max(runs) == 2
    got = np.concatenate([c.probabilities for c in chunks])
    want = p.class_probabilities(real(np.stack([a for a in items if isinstance(a, np.ndarray)])))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_workers_batch_is_bounded_by_bytes(model, monkeypatch):
    import convspec.runtime.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "CHUNK_BYTES", 3 * H * W)  # three 1x6x6 images
    chunks = list(Predictor(model).scored_chunks([band_image(j % 3) for j in range(10)], batch_size=64))
    assert [c.start for c in chunks] == [0, 3, 6, 9] and [len(c.kept) for c in chunks] == [3, 3, 3, 1]


def test_the_first_error_is_raised_as_its_own_class(model, tmp_path, monkeypatch):
    from convspec.runtime.images import ImageTooLarge

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLarge, match="big.png: image is too large"):
        Predictor(model).predict([band_image(0), tmp_path / "big.png", band_image(1)])


def test_concurrent_predict_is_consistent(model):
    p = Predictor(model, intra_op_threads=1)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (1, H, W), dtype=np.uint8) for _ in range(40)]
    expected = [q.probabilities for q in p.predict(images)]
    results: dict[int, list] = {}

    def work(t: int) -> None:
        results[t] = [q.probabilities for q in p.predict(images, batch_size=7 + t)]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results.values():
        for a, b in zip(got, expected, strict=True):
            assert a == pytest.approx(b, abs=1e-6)


def test_auto_providers_are_quiet(model, capfd):
    """On a machine without CUDA libraries, "auto" runs on the CPU and ORT prints nothing."""
    p = Predictor(model, providers="auto")
    assert p.providers[-1] == "CPUExecutionProvider"
    if not cuda_usable():
        assert p.providers == ["CPUExecutionProvider"]
        captured = capfd.readouterr()
        assert "CUDA" not in captured.err + captured.out
    assert Predictor(model, providers="cpu").providers == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="providers must be"):
        Predictor(model, providers="tpu")
    if not cuda_usable():
        with pytest.raises(ModelError, match="CUDA is not usable here"):
            Predictor(model, providers="cuda")


# Why None: a module set to None in sys.modules makes ``import torch`` raise ImportError.
TORCH_FREE = """
import sys
sys.modules["torch"] = None
sys.modules["torchvision"] = None
import numpy as np
import convspec.runtime as rt
p = rt.Predictor(sys.argv[1])
a = np.full((1, 6, 6), 10, np.uint8); a[:, 4:6] = 250
print(p.predict([a])[0].label, "torch" in sys.modules and sys.modules["torch"] is not None)
"""


def test_runtime_is_torch_free(model):
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(model)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["c", "False"]


def test_non_finite_test_metrics_in_the_metadata_are_dropped(tmp_path, band):
    """NaN is not JSON: GET /metadata answered 500 for a model whose metadata held one."""
    import onnx

    from convspec.runtime.metadata import read_metadata

    path = band.model(tmp_path / "band.onnx")
    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key == "convspec.test_metrics":
            prop.value = '{"accuracy": NaN, "f1": 0.5, "loss": Infinity, "note": "x"}'
            break
    else:
        model.metadata_props.add(key="convspec.test_metrics", value='{"accuracy": NaN, "f1": 0.5}')
    onnx.save(model, path)
    assert read_metadata(path).test_metrics == {"f1": 0.5}
