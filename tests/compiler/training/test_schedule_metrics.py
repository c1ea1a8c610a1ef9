"""lr_at is a pure function with the documented shapes; metrics agree with scikit-learn's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convspec.compiler.training import metrics
from convspec.compiler.training.schedule import Plateau, lr_at
from convspec.specs.spec import CosineScheduler, NoScheduler, OneCycleScheduler, StepScheduler


def lrs(scheduler, total=100, per_epoch=10, base=1.0):
    return [
        lr_at(s, base_lr=base, total_steps=total, steps_per_epoch=per_epoch, scheduler=scheduler) for s in range(total)
    ]


def test_warmup_then_constant():
    out = lrs(NoScheduler(type="none", warmup_epochs=1))
    assert out[0] == pytest.approx(0.1) and out[9] == pytest.approx(1.0) and set(out[10:]) == {1.0}


def test_step_decays_every_step_size_epochs():
    out = lrs(StepScheduler(type="step", step_size=3, gamma=0.5))
    assert out[29] == 1.0 and out[30] == 0.5 and out[60] == 0.25


def test_cosine_goes_from_base_to_min():
    out = lrs(CosineScheduler(type="cosine", min_lr=0.1))
    assert out[0] == pytest.approx(1.0) and out[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(out, out[1:]))


def test_onecycle_matches_torch_one_cycle_lr():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=100, pct_start=0.3, cycle_momentum=False)
    expected = []
    for _ in range(100):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = lrs(OneCycleScheduler(type="onecycle", pct_start=0.3))
    assert np.allclose(ours, expected, rtol=2e-2, atol=1e-6)
    assert int(np.argmax(ours)) == int(np.argmax(expected))


def test_plateau_cuts_after_patience():
    p = Plateau(factor=0.5, patience=1)
    for loss in (1.0, 0.9, 0.95, 0.95, 0.95):
        p.update(loss)
    assert p.scale == 0.5


def test_metrics_agree_with_sklearn_and_handle_one_class():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    m = metrics.compute(["accuracy", "f1", "auc"], y, probs, "multiclass")
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert m["f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert math.isnan(metrics.compute(["auc"], np.zeros(5, int), np.full((5, 1), 0.3), "binary")["auc"])
    pc = metrics.per_class(["a", "b", "c"], y, probs, "multiclass")
    assert np.trace(pc["confusion"]) == int(np.sum(probs.argmax(1) == y))
