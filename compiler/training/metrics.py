"""Classification metrics: the one torch-free module, :mod:`convspec.runtime.metrics`, re-exported.

Why a re-export: training, export and tuning import ``compiler.metrics``; the definitions live
in ``runtime/`` so that deployment (``convspec evaluate``, ``Predictor``) computes the same numbers.
"""

from __future__ import annotations

from convspec.runtime.metrics import (  # noqa: F401  (re-exported)
    METRICS,
    auc,
    binary_rates,
    class_auc,
    class_probabilities,
    compute,
    confusion,
    expected_calibration_error,
    per_class,
    positive_probability,
    predictions,
    reliability,
)
