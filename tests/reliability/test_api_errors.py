"""The Python API raises ConvspecError subclasses (SpecError, DataError, ImageError, ModelError,
CheckpointError, ExportError) for bad input, never a bare KeyError/RuntimeError, and each names
what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from convspec.specs import ConvspecError, SpecError, load_spec, load_spec_text

from .conftest import DIGITS, probe_model, tiny_spec, write


def test_load_spec_missing_file_and_bad_override(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: no such file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"--set model.layers.9"):
        load_spec(DIGITS, overrides=["model.layers.9.filters=3"])


def test_build_model_without_a_class_count_is_a_spec_error(tmp_path):
    from convspec.compiler import build_model

    spec = load_spec(write(tmp_path / "s.yaml", tiny_spec("{type: folder, path: not-here}")))
    with pytest.raises(SpecError, match="number of classes is unknown"):
        build_model(spec)


def test_train_on_missing_data_is_a_data_error(tmp_path):
    from convspec.compiler import train
    from convspec.runtime.datasets import DataError

    spec = load_spec(write(tmp_path / "s.yaml", tiny_spec("{type: folder, path: not-here}")))
    with pytest.raises(DataError, match="folder not found"):
        train(spec, out=tmp_path / "runs", progress=False, export=False, log=lambda _m: None)


def test_failed_data_load_leaves_no_run_folder(tmp_path):
    from convspec.compiler import train

    spec = load_spec(write(tmp_path / "s.yaml", tiny_spec("{type: folder, path: not-here}")))
    with pytest.raises(ConvspecError):
        train(spec, out=tmp_path / "runs", progress=False, export=False, log=lambda _m: None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_with_an_unknown_device_is_a_user_error(tmp_path):
    from convspec.compiler import train

    spec = load_spec(DIGITS, overrides=["training.epochs=1"])
    with pytest.raises(ConvspecError, match="tpu"):
        train(spec, out=tmp_path / "runs", device="tpu", progress=False, export=False, log=lambda _m: None)


def test_export_of_a_missing_run_is_an_export_error(tmp_path):
    from convspec.compiler import export_onnx
    from convspec.compiler.export.onnx import ExportError

    with pytest.raises(ExportError, match="run folder not found"):
        export_onnx(tmp_path / "nowhere")


def test_predictor_errors_name_the_image_or_the_array(tmp_path):
    from convspec.runtime import Predictor
    from convspec.runtime.images import ImageError
    from convspec.runtime.predictor import ModelError

    p = Predictor(probe_model(tmp_path / "m.onnx"), providers="cpu")
    with pytest.raises(ImageError, match="ghost.png: file not found"):
        p.predict([tmp_path / "ghost.png"])
    with pytest.raises(ImageError, match=r"<array 1>: float pixels must be in \[0, 1\]"):
        p.predict([np.zeros((6, 6), np.uint8), np.full((6, 6), 7.0)])
    with pytest.raises(ModelError, match="expected uint8 pixels"):
        p.predict_arrays(np.zeros((1, 1, 6, 6), np.float32))
    with pytest.raises(ModelError, match=r"expected an array of shape \(N, 1, 6, 6\)"):
        p.predict_arrays(np.zeros((1, 3, 6, 6), np.uint8))
    failures: list = []
    assert p.predict([tmp_path / "ghost.png"], on_error="skip", failures=failures) == []
    assert failures == [(str(tmp_path / "ghost.png"), "file not found")]
    # items of another type: named, never "expected str, bytes or os.PathLike object, not int"
    with pytest.raises(TypeError, match="items: bytes are neither a path nor an image"):
        p.predict(b"some.png")
    with pytest.raises(TypeError, match="items: bytes"):
        list(p.scored_chunks(b"some.png"))
    with pytest.raises(TypeError, match=r"items\[1\]: expected a file path \(str\) or a numpy array \(got int\)"):
        p.predict([tmp_path / "ghost.png", 3])


def test_boolean_labels_are_not_taken_as_class_indices(tmp_path):
    from convspec.runtime import DataError, Predictor, evaluate_arrays

    p = Predictor(probe_model(tmp_path / "m.onnx"), providers="cpu")
    images = np.zeros((2, 1, 6, 6), np.uint8)
    with pytest.raises(DataError, match="labels: expected integer class indices .* \\(got bool values\\)"):
        evaluate_arrays(p, images, np.array([True, False]))
    assert evaluate_arrays(p, images, np.array([1, 0])).images == 2


def test_every_user_facing_error_type_is_a_convspec_error():
    from convspec.compiler.export.onnx import ExportError
    from convspec.compiler.run.checkpoint import CheckpointError
    from convspec.runtime.datasets import DataError
    from convspec.runtime.images import ImageError
    from convspec.runtime.predictor import ModelError

    for cls in (SpecError, DataError, ImageError, ModelError, CheckpointError, ExportError):
        assert issubclass(cls, ConvspecError), cls


def test_spec_text_of_every_kind_raises_only_spec_error():
    for text in (b"\x00\x01", b"\xff\xfe", "", "[", "a: *b", "version: 1\n" * 3, "\t- x"):
        with pytest.raises(SpecError):
            load_spec_text(text, "t.yaml")
