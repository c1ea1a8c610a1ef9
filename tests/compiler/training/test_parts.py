"""The loop's parts on their own: best-tracking and early stopping, class weights, the state's
checkpoint round trip, and an epoch that reads no device value per step."""

from __future__ import annotations

import copy
import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convspec.compiler.data.loading import load_dataset
from convspec.compiler.training.device import placement_for
from convspec.compiler.training.distributed import Dist
from convspec.compiler.training.epoch import train_epoch
from convspec.compiler.training.objective import class_weights, fused_supported, make_criterion, make_optimizer
from convspec.compiler.training.setup import setup_training
from convspec.compiler.training.stopping import Monitor
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[3]


def rec(epoch: int, **values) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, **values}


class ES:
    def __init__(self, monitor="val_loss", patience=2, mode="auto", min_delta=0.0):
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta


def test_monitor_minimises_a_loss_and_stops_after_patience():
    m = Monitor.from_spec(ES("val_loss", patience=2))
    assert m.minimize
    assert m.update(rec(1, val_loss=0.9)) and m.best_epoch == 1
    assert m.update(rec(2, val_loss=0.5))
    assert not m.update(rec(3, val_loss=0.6)) and not m.should_stop
    assert not m.update(rec(4, val_loss=0.5)) and m.should_stop  # equal is not better
    assert (m.best, m.best_epoch, m.stale) == (0.5, 2, 2)


def test_monitor_modes_auto_max_and_min_delta():
    acc = Monitor.from_spec(ES("val_accuracy"))
    assert not acc.minimize
    assert acc.update(rec(1, val_accuracy=0.8)) and not acc.update(rec(2, val_accuracy=0.7))
    forced = Monitor.from_spec(ES("val_accuracy", mode="min"))
    assert forced.minimize and forced.update(rec(1, val_accuracy=0.8)) and forced.update(rec(2, val_accuracy=0.7))
    delta = Monitor.from_spec(ES("val_loss", min_delta=0.1))
    assert delta.update(rec(1, val_loss=1.0))
    assert not delta.update(rec(2, val_loss=0.95))  # better, but by less than min_delta
    assert delta.update(rec(3, val_loss=0.85))


def test_monitor_without_validation_falls_back_to_training_and_never_stops_without_patience():
    m = Monitor.from_spec(None)
    assert m.patience is None
    assert m.update(rec(1)) and m.value(rec(1)) == 1.0
    for e in range(2, 50):
        m.update(rec(e))
    assert not m.should_stop
    nan = Monitor()
    assert not nan.update(rec(1, val_loss=math.nan)), "a NaN epoch is never the best"


def test_monitor_state_round_trips():
    m = Monitor.from_spec(ES("val_accuracy", patience=3))
    m.update(rec(1, val_accuracy=0.6))
    m.update(rec(2, val_accuracy=0.5))
    other = Monitor.from_spec(ES("val_accuracy", patience=3))
    other.restore(m.state())
    assert (other.best, other.best_epoch, other.stale) == (0.6, 1, 1)
    fresh = Monitor.from_spec(ES("val_accuracy"))
    again = Monitor.from_spec(ES("val_accuracy"))
    again.restore(fresh.state())
    assert again.best is None


def spec_with(*overrides: str):
    return load_spec(REPO / "examples" / "digits.yaml", overrides=list(overrides))


def test_balanced_class_weights_follow_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0, 0, 0, 1, 2, 2])
    w = class_weights(spec_with("training.loss.class_weights=balanced"), labels, 3)
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    assert class_weights(spec_with(), labels, 3) is None
    given = class_weights(spec_with("training.loss.class_weights=[1,2,3,4,5,6,7,8,9,10]"), labels, 10)
    np.testing.assert_array_equal(given, np.arange(1, 11))


def test_weighted_binary_loss_weights_each_sample_by_its_class():
    spec = load_spec(REPO / "examples" / "digits-binary.yaml", overrides=["training.loss.class_weights=[1.0, 3.0]"])
    crit = make_criterion(spec, np.array([1.0, 3.0]), torch.device("cpu"))
    logits, y = torch.tensor([[0.0], [0.0]]), torch.tensor([0, 1])
    assert crit(logits, y).item() == pytest.approx(math.log(2))  # equal per-sample losses: any weights
    logits = torch.tensor([[2.0], [2.0]])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
    assert crit(logits, y).item() == pytest.approx(((per[0] * 1 + per[1] * 3) / 4).item())


@pytest.fixture(scope="module")
def digits():
    spec = spec_with("training.epochs=2")
    return spec, load_dataset(spec, log=lambda _m: None)


def test_an_epoch_reads_no_device_value_per_step(digits, monkeypatch):
    spec, data = digits
    setup, state = setup_training(spec, data, placement_for("cpu", "fp32"), Dist())
    assert setup.steps_per_epoch > 10
    calls = []
    real_item = torch.Tensor.item

    def counting_item(t):
        caller = sys._getframe(1).f_code.co_filename
        # Why the filter: AdamW reads its per-parameter step counters, which live on the host
        # even when training on CUDA (capturable=False), so those reads never wait for the GPU.
        if os.sep + "torch" + os.sep + "optim" + os.sep not in caller:
            calls.append(caller)
        return real_item(t)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    record, n = train_epoch(setup, state, 1)
    assert n == len(data.splits["train"]) and math.isfinite(record["train_loss"])
    assert len(calls) <= 2, f"{len(calls)} host reads in an epoch of {setup.steps_per_epoch} steps"


def test_fused_kernels_only_where_torch_has_them():
    assert fused_supported(torch.nn.Linear(2, 2))
    assert not fused_supported(torch.nn.Linear(2, 2, device="meta"))  # no kernels there: the default update
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    assert not fused_supported(frozen)  # nothing to train


def _steps(model, opt, x, y, n):
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model.logits(x), y).backward()
        opt.step()


@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def test_the_fused_optimizer_is_the_same_rule_and_takes_an_unfused_state(digits, kind):
    """make_optimizer fuses on the CPU; its steps match torch's default implementation, and an
    optimizer state saved by an unfused one (a run from before) loads and continues alike."""
    from convspec.compiler.model.builder import build_model

    spec = spec_with(f"training.optimizer.type={kind}", "training.optimizer.weight_decay=0.01")
    _, data = digits
    idx = data.splits["train"][:64]
    x, y = torch.from_numpy(data.images[idx]).float(), torch.from_numpy(data.labels[idx])

    def model():
        torch.manual_seed(0)
        net = build_model(spec, num_classes=len(data.class_names), class_names=data.class_names)
        # as setup_training places it (channels_last); eval: no dropout masks, so both see the same gradients
        return net.to(memory_format=torch.channels_last).eval()

    fused_model, plain_model, initial = model(), model(), model()
    fused = make_optimizer(spec, fused_model)
    assert all(g["fused"] for g in fused.param_groups)
    plain = make_optimizer(spec, plain_model)
    for group in plain.param_groups:
        group["fused"] = None  # torch's default implementation, the same hyperparameters
    _steps(fused_model, fused, x, y, 3)
    _steps(plain_model, plain, x, y, 3)
    for a, b, start in zip(fused_model.parameters(), plain_model.parameters(), initial.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert not torch.equal(a, start)  # it moved

    resumed_model = model()
    resumed_model.load_state_dict(plain_model.state_dict())
    resumed = make_optimizer(spec, resumed_model)
    resumed.load_state_dict(copy.deepcopy(plain.state_dict()))  # Why a copy: as read from last.pt, not shared
    _steps(resumed_model, resumed, x, y, 2)
    _steps(plain_model, plain, x, y, 2)
    for a, b in zip(resumed_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_state_checkpoint_round_trip_continues_identically(digits):
    spec, data = digits
    place = placement_for("cpu", "fp32")
    setup, state = setup_training(spec, data, place, Dist())
    train_epoch(setup, state, 1)
    state.epoch = 1
    buf = io.BytesIO()  # as checkpoint.save does: a copy, not tensors shared with the live model
    torch.save(state.to_checkpoint(spec.to_yaml(), data.class_names, place.device), buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    a, _ = train_epoch(setup, state, 2)
    setup2, state2 = setup_training(spec, data, place, Dist(), fresh=False)
    state2.restore(ckpt, place.device)
    b, _ = train_epoch(setup2, state2, 2)
    assert a["train_loss"] == b["train_loss"] and a["train_accuracy"] == b["train_accuracy"]
    for (k, v), v2 in zip(state.model.state_dict().items(), state2.model.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k


def test_train_never_changes_the_callers_spec(tmp_path, digits):
    from convspec.compiler.training.loop import train

    spec = spec_with("training.epochs=1")
    before = spec.to_yaml()
    train(spec, out=tmp_path, device="cpu", export=False, test=False, progress=False, log=lambda _m: None)
    assert spec.to_yaml() == before and spec.training.device == "auto"


def test_an_epoch_whose_last_batch_is_one_image_leaves_it_out(tmp_path):
    """Batch norm on flat features cannot train on one image (torch raised a traceback mid-run):
    a lone last image sits out that epoch (a random one each epoch: the order is shuffled)."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "version: 1\ntask: multiclass\ndata: {source: {type: builtin, name: digits, classes: [0, 1, 2]}}\n"
        "input: {channels: 1, size: [8, 8]}\n"
        "model: {layers: [{type: conv, filters: 4, batch_norm: true}, {type: global_avg_pool},\n"
        "  {type: dense, units: 8, batch_norm: true, activation: relu}]}\n"
    )
    spec = load_spec(spec_file)
    data = load_dataset(spec, log=lambda _m: None)
    n = len(data.splits["train"])
    spec = load_spec(spec_file, overrides=[f"training.batch_size={n - 1}"])  # batches of n - 1, then 1
    setup, state = setup_training(spec, data, placement_for("cpu", "fp32"), Dist())
    assert setup.steps_per_epoch == 1
    record, seen = train_epoch(setup, state, 1)
    assert seen == n - 1 and math.isfinite(record["train_loss"])


def test_a_training_split_of_one_image_with_batch_norm_is_one_line(tmp_path):
    """No last-batch trim can help one image: torch's refusal becomes what to change."""
    import dataclasses

    from convspec.compiler.training.errors import BatchOfOne

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "version: 1\ntask: multiclass\ndata: {source: {type: builtin, name: digits, classes: [0, 1, 2]}}\n"
        "input: {channels: 1, size: [8, 8]}\n"
        "model: {layers: [{type: global_avg_pool}, {type: dense, units: 4, batch_norm: true}]}\n"
    )
    spec = load_spec(spec_file)
    data = load_dataset(spec, log=lambda _m: None)
    data = dataclasses.replace(data, splits={**data.splits, "train": data.splits["train"][:1]})
    setup, state = setup_training(spec, data, placement_for("cpu", "fp32"), Dist())
    with pytest.raises(BatchOfOne, match=r"one value per channel\); the training split holds 1 image"):
        train_epoch(setup, state, 1)


def test_a_backbone_with_batch_size_1_fails_at_once_and_leaves_no_run(tmp_path):
    """ResNet-18 at 32x32 ends in 1x1 maps, which the spec's own shapes do not show: the first step
    fails with one line, and the fresh run folder goes (it held last.pt, spec.yaml, split.json)."""
    pytest.importorskip("timm")
    from convspec.compiler.training.errors import BatchOfOne
    from convspec.compiler.training.loop import train

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "version: 1\ntask: multiclass\ndata: {source: {type: builtin, name: digits, classes: [0, 1]}}\n"
        "input: {channels: 3, size: [32, 32]}\n"
        "model: {layers: [{type: backbone, name: resnet18, weights: none}]}\n"
        "training: {epochs: 1, batch_size: 1}\n"
    )
    with pytest.raises(BatchOfOne, match="use training.batch_size 2 or more"):
        train(load_spec(spec_file), out=tmp_path / "runs", export=False, progress=False, log=lambda _m: None)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
