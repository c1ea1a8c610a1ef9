"""The exporter's op registry, built once per process: the same ONNX file, and torch left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from convspec.compiler.export import registry
from convspec.compiler.export.onnx import _export_proto
from convspec.compiler.model.builder import build_model
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[3]


def test_exports_reuse_one_registry_and_write_the_same_model(monkeypatch):
    found = registry._registry_class()
    if found is None:
        pytest.skip("this torch has no ONNXRegistry.from_torchlib: every export builds its own")
    cls, original = found
    builds = []

    def counting(klass, *args, **kwargs):
        builds.append(kwargs)
        return original.__func__(klass, *args, **kwargs)

    monkeypatch.setattr(registry, "_built", {})
    monkeypatch.setattr(cls, "from_torchlib", classmethod(counting))
    spec = load_spec(REPO / "examples" / "digits.yaml")
    model = build_model(spec, num_classes=10).eval()
    first, second = (_export_proto(model, spec).SerializeToString() for _ in range(2))
    assert len(builds) == 1  # the second export reused the first one's registry
    assert first == second
    assert cls.__dict__["from_torchlib"].__func__ is counting  # torch's own method is back after each export

    monkeypatch.setattr(registry, "_built", {})  # a fresh process: it builds its own, and gets the same model
    assert _export_proto(model, spec).SerializeToString() == first and len(builds) == 2
