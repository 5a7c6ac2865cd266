"""Probability calibration stored in a bundle (``calibration.json``) and applied at prediction time; no pickles.

Class-weighted training (balanced ``sample_weight``) moves a model's probabilities away from the prevalence of
its training data. A :class:`Calibrator` maps them back: temperature-and-bias scaling of the log-probabilities
(a multinomial logistic recalibration; for two classes exactly Platt scaling on the logit)::

    p'_k = softmax_k( log(p_k) / T + b_k ),   b_0 = 0

fitted by :mod:`node.training.calibrate` on out-of-fold probabilities of patient-grouped cross-validation,
unweighted, so the calibrated probabilities match the training prevalence (stated in ``prevalence``).

:class:`ConfidenceRule` is the threshold under which a head's top calibrated probability is reported as
"low confidence"; it is chosen from the same cross-validation and stored beside the calibrator.

The metric helpers (:func:`calibration_in_the_large`, :func:`expected_calibration_error`,
:func:`reliability_table`) are shared by training (the numbers stored in the bundle) and the model card.
Research use only, not for diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
CALIBRATION = "calibration.json"
METHOD = "temperature-and-bias scaling of log-probabilities (multinomial logistic recalibration; Platt for 2 classes)"
_EPS = 1e-9


def _log(p: FloatArray) -> FloatArray:
    return np.asarray(np.log(np.clip(p, _EPS, 1.0)), dtype=np.float64)


def softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


@dataclass(frozen=True)
class ConfidenceRule:
    """"Low confidence" when the top calibrated probability is below ``threshold`` (chosen from CV)."""

    threshold: float
    target_accuracy: float
    rule: str
    cv_accuracy_at_or_above: float | None = None
    cv_accuracy_below: float | None = None
    cv_fraction_at_or_above: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.threshold <= 1.0) or not (0.0 < self.target_accuracy <= 1.0):
            raise ValueError(f"invalid confidence rule threshold {self.threshold} / target {self.target_accuracy}")

    def is_low(self, top_probability: float) -> bool:
        return top_probability < self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold, "target_accuracy": self.target_accuracy, "rule": self.rule,
            "cv_accuracy_at_or_above": self.cv_accuracy_at_or_above, "cv_accuracy_below": self.cv_accuracy_below,
            "cv_fraction_at_or_above": self.cv_fraction_at_or_above,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConfidenceRule:
        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            threshold=float(data["threshold"]), target_accuracy=float(data["target_accuracy"]), rule=str(data["rule"]),
            cv_accuracy_at_or_above=opt("cv_accuracy_at_or_above"), cv_accuracy_below=opt("cv_accuracy_below"),
            cv_fraction_at_or_above=opt("cv_fraction_at_or_above"),
        )  # fmt: skip


@dataclass(frozen=True)
class Calibrator:
    """Temperature ``T`` and per-class biases (first class 0) over log-probabilities, plus what it was fitted on."""

    classes: tuple[str, ...]
    temperature: float
    bias: tuple[float, ...]
    prevalence: Mapping[str, float] = field(default_factory=dict)
    confidence: ConfidenceRule | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # CV before/after metrics, folds, reliability

    def __post_init__(self) -> None:
        if len(self.bias) != len(self.classes) or len(self.classes) < 2:
            raise ValueError("a calibrator needs one bias per class and at least two classes")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"calibration temperature must be finite and > 0, got {self.temperature}")
        if not all(math.isfinite(b) for b in self.bias):
            raise ValueError("calibration biases must be finite")

    def apply(self, proba: FloatArray) -> FloatArray:
        """Calibrated probabilities for rows of raw probabilities (same class order)."""
        p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
        if p.shape[1] != len(self.classes):
            raise ValueError(f"calibrator for {len(self.classes)} classes got {p.shape[1]} columns")
        return softmax(_log(p) / self.temperature + np.asarray(self.bias, dtype=np.float64)[None, :])

    def to_json(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "classes": list(self.classes),
            "temperature": self.temperature,
            "bias": list(self.bias),
            "prevalence": dict(self.prevalence),
            "confidence": self.confidence.to_json() if self.confidence is not None else None,
            "details": dict(self.details),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibrator:
        conf = data.get("confidence")
        return cls(
            classes=tuple(str(c) for c in data["classes"]),
            temperature=float(data["temperature"]),
            bias=tuple(float(b) for b in data["bias"]),
            prevalence={str(k): float(v) for k, v in dict(data.get("prevalence") or {}).items()},
            confidence=ConfidenceRule.from_json(conf) if isinstance(conf, Mapping) else None,
            details=dict(data.get("details") or {}),
        )


# -- metrics ------------------------------------------------------------------------------------------------


def calibration_in_the_large(y: Sequence[int] | IntArray, p: FloatArray) -> tuple[float, float]:
    """(intercept, slope) of the logistic recalibration of binary outcomes ``y`` on ``logit p``: the intercept
    with ``logit p`` as offset (calibration-in-the-large; 0 is ideal), the slope of a free fit (1 is ideal).
    NaN when ``y`` has one outcome only."""
    yy = np.asarray(y, dtype=np.float64)
    pp = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    if yy.size == 0 or yy.min() == yy.max():
        return math.nan, math.nan
    logit = np.log(pp / (1 - pp))
    a = 0.0
    for _ in range(50):  # Newton on the offset model
        q = 1 / (1 + np.exp(-(a + logit)))
        grad, hess = float(np.sum(yy - q)), float(np.sum(q * (1 - q)))
        if hess <= 0:
            break
        step = grad / hess
        a += step
        if abs(step) < 1e-10:
            break
    theta = np.zeros(2)
    design = np.column_stack([np.ones_like(logit), logit])
    for _ in range(100):  # Newton with a tiny ridge (separable data stays finite)
        qv = 1 / (1 + np.exp(-(design @ theta)))
        gradv = design.T @ (yy - qv) - 1e-6 * theta
        hessm = (design * (qv * (1 - qv))[:, None]).T @ design + 1e-6 * np.eye(2)
        stepv = np.linalg.solve(hessm, gradv)
        theta += stepv
        if float(np.max(np.abs(stepv))) < 1e-10:
            break
    return float(a), float(theta[1])


def expected_calibration_error(y: Sequence[int] | IntArray, proba: FloatArray, n_bins: int = 10) -> float:
    """Top-label ECE: the lesion-weighted mean |accuracy - confidence| over equal-width bins of the top probability."""
    yy = np.asarray(y, dtype=np.int64)
    p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
    top = p.max(axis=1)
    right = (p.argmax(axis=1) == yy).astype(np.float64)
    bins = np.minimum((top * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        ece += float(sel.mean()) * abs(float(right[sel].mean()) - float(top[sel].mean()))
    return ece


def reliability_table(y: Sequence[int] | IntArray, proba: FloatArray, n_bins: int = 5) -> list[dict[str, float]]:
    """Rows of (bin range, lesions, mean top probability, observed accuracy) over equal-width bins of the top
    probability; empty bins are left out."""
    yy = np.asarray(y, dtype=np.int64)
    p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
    top = p.max(axis=1)
    right = (p.argmax(axis=1) == yy).astype(np.float64)
    bins = np.minimum((top * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            rows.append({"low": b / n_bins, "high": (b + 1) / n_bins, "n": int(sel.sum()),
                         "mean_predicted": float(top[sel].mean()), "observed": float(right[sel].mean())})
    return rows


def calibration_summary(y: Sequence[int] | IntArray, proba: FloatArray, classes: Sequence[str]) -> dict[str, Any]:
    """Intercept and slope per class (one-vs-rest; the positive class only for two classes), top-label ECE,
    mean predicted vs observed prevalence per class, and a 5-bin reliability table."""
    yy = np.asarray(y, dtype=np.int64)
    p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
    k = p.shape[1]
    per_class: dict[str, dict[str, float | None]] = {}
    for c in range(1 if k == 2 else 0, k):
        intercept, slope = calibration_in_the_large(yy == c, p[:, c])
        per_class[classes[c]] = {
            "intercept": intercept if math.isfinite(intercept) else None,
            "slope": slope if math.isfinite(slope) else None,
            "mean_predicted": float(p[:, c].mean()),
            "observed": float((yy == c).mean()),
        }
    return {"per_class": per_class, "ece": expected_calibration_error(yy, p), "reliability": reliability_table(yy, p)}
