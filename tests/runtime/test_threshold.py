"""Binary operating thresholds: each rule against brute force, the spec key, and the Predictor using it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from convspec.runtime import Predictor
from convspec.runtime.evaluate import evaluate_arrays
from convspec.runtime.threshold import (
    ThresholdError,
    ThresholdWarning,
    choose_threshold,
    describe_threshold,
    threshold_from_results,
    threshold_record,
)
from convspec.specs import SpecError, load_spec_text


@pytest.fixture
def val():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(0, 1.2, 400))))  # overlapping classes
    return y, p


def _rates(y, p, t):
    pred = p >= t
    tp, fp = (pred & (y == 1)).sum(), (pred & (y == 0)).sum()
    recall = tp / (y == 1).sum()
    precision = tp / (tp + fp) if tp + fp else 0.0
    return precision, recall, 1 - fp / (y == 0).sum()


def test_recall_rule_is_the_highest_threshold_reaching_it(val):
    y, p = val
    for target in (0.5, 0.9, 0.95, 1.0):
        t = choose_threshold(y, p, {"recall": target})
        assert _rates(y, p, t)[1] >= target
        higher = np.unique(p[p > t])[1:]  # [0] is the probability the rule chose: t sits just below it
        assert not len(higher) or _rates(y, p, higher[0])[1] < target  # the next threshold up falls short


def test_precision_rule_is_the_lowest_threshold_reaching_it(val):
    y, p = val
    t = choose_threshold(y, p, {"precision": 0.9})
    assert _rates(y, p, t)[0] >= 0.9
    assert all(_rates(y, p, s)[0] < 0.9 for s in np.unique(p) if s < t)


def test_unreachable_precision_warns_and_uses_the_best():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.9, 0.8, 0.3, 0.2])  # the top score is a negative: precision never reaches 1
    with pytest.warns(ThresholdWarning, match="no threshold reaches"):
        t = choose_threshold(y, p, {"precision": 0.99})
    best = max(_rates(y, p, s)[0] for s in p)
    assert _rates(y, p, t)[0] == best


def test_an_unreached_precision_is_recorded_with_the_stored_threshold_not_warned():
    """Training showed a raw Python warning naming another threshold than the one stored, and the
    report read as if the target were met."""
    y = np.array([0, 1, 0, 1])
    p = np.array([0.9, 0.8, 0.3, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a Python warning
        record = threshold_record({"precision": 0.99}, y, p)
    assert f"threshold {record['value']:.6g} has the best, 0.5000" in record["missed"]
    assert record["validation"]["precision"] == pytest.approx(0.5)
    assert "missed" not in threshold_record({"precision": 0.5}, y, p)
    assert "missed" not in threshold_record({"recall": 0.9}, y, p)


def test_the_stored_threshold_is_the_shortest_decimal_of_the_gap_and_robust_to_1e_8():
    """An export of a run without results.json stored 0.5472342371940613 where training stored
    0.5472342073917389 (PyTorch batched the images differently): now both store one short decimal."""
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.5312, 0.5633, 0.9])
    t = choose_threshold(y, p, {"recall": 1.0})
    assert t == 0.55  # in the gap's middle third, [0.5419, 0.5526]: two digits are the fewest
    assert choose_threshold(y, p + 3e-8, {"recall": 1.0}) == t
    assert choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), {"recall": 1.0}) in (0.4, 0.5, 0.6)


def test_f1_and_youden_match_brute_force(val):
    y, p = val
    grid = np.unique(p)
    f1 = [2 * a * b / (a + b) if a + b else 0 for a, b, _ in (_rates(y, p, s) for s in grid)]
    youden = [b + c - 1 for _, b, c in (_rates(y, p, s) for s in grid)]
    t_f1 = choose_threshold(y, p, {"metric": "f1"})
    t_j = choose_threshold(y, p, {"metric": "youden"})
    assert describe_threshold(y, p, t_f1)["f1"] == pytest.approx(max(f1))
    r = describe_threshold(y, p, t_j)
    assert r["sensitivity"] + r["specificity"] - 1 == pytest.approx(max(youden))


@pytest.mark.parametrize("rule", [{"recall": 0.9}, {"precision": 0.8}, {"metric": "f1"}, {"metric": "youden"}])
def test_chosen_threshold_sits_between_validation_probabilities(val, rule):
    """The exported model's probabilities differ from PyTorch's by ~1e-8: no image may sit on the threshold."""
    y, p = val
    t = choose_threshold(y, p, rule)
    below, above = p[p < t].max(), p[p >= t].min()
    gap = above - below
    assert below + gap / 3 - 1e-12 <= t <= above - gap / 3 + 1e-12  # the middle third: the same labels, a margin
    assert len(repr(t)) <= len(repr(round((below + above) / 2, 15)))  # the shortest decimal there, not any
    drift = (above - below) / 4
    for noisy in (p - drift, p + drift):
        assert ((noisy >= t) == (p >= t)).all()


def test_fixed_and_bad_rules(val):
    y, p = val
    assert choose_threshold(y, p, 0.5) == 0.5 and choose_threshold(y, p, 0.3) == 0.3
    with pytest.raises(ThresholdError, match="both classes"):
        choose_threshold(np.ones(5, int), p[:5], {"recall": 0.9})
    with pytest.raises(ThresholdError, match="expected a number"):
        choose_threshold(y, p, {"recal": 0.9})


def test_threshold_record_and_results_entry(val):
    y, p = val
    rec = threshold_record({"recall": 0.95}, y, p, y[:100], p[:100])
    assert rec["validation"]["recall"] >= 0.95 and set(rec["test"]) >= {"sensitivity", "specificity"}
    assert threshold_from_results({"threshold": rec}) == rec["value"]
    assert threshold_from_results({}) is None and threshold_from_results({"threshold": 0.3}) == 0.3


SPEC = """version: 1
task: {task}
data: {{source: {{type: builtin, name: digits{classes}}}}}
input: {{channels: 1, size: [8, 8]}}
model: {{layers: [{{type: flatten}}]}}
export:
  threshold: {threshold}
"""


def test_spec_key_binary_only_with_position():
    spec = load_spec_text(SPEC.format(task="binary", classes=", classes: [3, 8]", threshold="{recall: 0.95}"))
    assert spec.export.threshold.recall == 0.95
    assert (
        load_spec_text(SPEC.format(task="binary", classes=", classes: [3, 8]", threshold=0.3)).export.threshold == 0.3
    )
    with pytest.raises(SpecError, match=r"<spec>:7:3: export.threshold: is for binary tasks only"):
        load_spec_text(SPEC.format(task="multiclass", classes="", threshold="{metric: f1}"))
    with pytest.raises(SpecError, match=r":7:3: export.threshold: expected a number in \[0, 1\], \{metric"):
        load_spec_text(SPEC.format(task="binary", classes=", classes: [3, 8]", threshold="{recal: 0.9}"))
    with pytest.raises(SpecError, match=r"export.threshold.metric"):
        load_spec_text(SPEC.format(task="binary", classes=", classes: [3, 8]", threshold="{metric: auc}"))
    assert load_spec_text(SPEC.format(task="multiclass", classes="", threshold=0.5)).export.threshold == 0.5


def _mean_model(path, threshold=None):
    """A binary ONNX model: p(positive) = mean pixel / 255, uint8 (N, 1, 2, 2) -> (N, 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f", "axes"], ["m"], keepdims=0),
            helper.make_node("Div", ["m", "scale"], ["q"]),
            helper.make_node("Unsqueeze", ["q", "one"], ["probabilities"]),
        ],
        "mean",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    props = {
        "convspec.classes": json.dumps(["ok", "defect"]),
        "convspec.task": "binary",
        "convspec.channels": "1",
        "convspec.input_size": json.dumps([2, 2]),
    }
    if threshold is not None:
        props["convspec.threshold"] = str(threshold)
    helper.set_model_props(model, props)
    onnx.save(model, path)
    return path


def test_predictor_and_evaluate_label_by_the_metadata_threshold(tmp_path):
    images = np.stack([np.full((1, 2, 2), v, np.uint8) for v in (51, 102, 153, 204)])  # p = 0.2, 0.4, 0.6, 0.8
    plain = Predictor(_mean_model(tmp_path / "plain.onnx"))
    screen = Predictor(_mean_model(tmp_path / "screen.onnx", threshold=0.3))
    assert plain.threshold == 0.5 and screen.threshold == 0.3 and screen.info.threshold == 0.3
    assert [p.label for p in plain.predict(list(images))] == ["ok", "ok", "defect", "defect"]
    got = screen.predict(list(images))
    assert [p.label for p in got] == ["ok", "defect", "defect", "defect"]
    assert got[1].probabilities == pytest.approx({"ok": 0.6, "defect": 0.4})  # probabilities unchanged
    np.testing.assert_allclose(screen.predict_arrays(images), plain.predict_arrays(images))
    r = evaluate_arrays(screen, images, np.array([0, 1, 1, 1]))
    assert r.accuracy == 1.0 and r.recall == 1.0 and r.threshold == 0.3
    assert evaluate_arrays(plain, images, np.array([0, 1, 1, 1])).recall == pytest.approx(2 / 3)


def test_malformed_threshold_metadata_is_a_model_error(tmp_path):
    from convspec.runtime import ModelError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match="threshold"):
            Predictor(_mean_model(tmp_path / "bad.onnx", threshold=1.7))
