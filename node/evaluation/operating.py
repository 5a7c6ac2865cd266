"""Operating points of a binary score: sensitivity, specificity, PPV and NPV at a threshold, with CIs.

Two thresholds are chosen on a *choosing* set (in a research run: the out-of-fold training scores) and applied
unchanged to an *evaluation* set (the hold-out test part), so the threshold never sees the test labels:

* the **Youden point**: the threshold maximising sensitivity + specificity − 1;
* a **fixed sensitivity**: the highest threshold whose sensitivity is still >= the target (default 0.90).

CIs are patient-level bootstrap percentile intervals (:func:`node.evaluation.stats.patient_resamples`) with the
threshold held fixed; they do not include the threshold's own uncertainty (recorded in ``rule``). A metric whose
denominator is empty (no predicted positive for PPV, say) is ``nan`` in that resample and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.evaluation.stats import Interval, patient_resamples

FloatArray = npt.NDArray[np.float64]
METRICS = ("sensitivity", "specificity", "ppv", "npv")
RULE = ("threshold chosen on the choosing set, applied unchanged to the evaluation set; patient-level "
        "bootstrap percentile 95 % CI with the threshold fixed")


def _counts(y: npt.NDArray[np.bool_], score: FloatArray, threshold: float) -> tuple[int, int, int, int]:
    pred = score >= threshold
    return (int(np.sum(pred & y)), int(np.sum(pred & ~y)), int(np.sum(~pred & ~y)), int(np.sum(~pred & y)))


def rates(y_true: Sequence[int] | npt.NDArray[np.int64], score: FloatArray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV of ``score >= threshold`` (``nan`` where the denominator is 0)."""
    y = np.asarray(y_true).astype(bool)
    tp, fp, tn, fn = _counts(y, np.asarray(score, dtype=np.float64), threshold)

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn)}


def _candidates(score: FloatArray) -> FloatArray:
    return np.unique(np.concatenate([np.asarray(score, dtype=np.float64), [np.inf]]))


def youden_threshold(y_true: Sequence[int] | npt.NDArray[np.int64], score: FloatArray) -> float:
    """The threshold (one of the scores) maximising sensitivity + specificity − 1; ties: the higher threshold."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        raise ValueError("a Youden point needs both positive and negative cases")
    s = np.asarray(score, dtype=np.float64)
    best_t, best_j = math.inf, -math.inf
    for t in _candidates(s)[::-1]:
        r = rates(y, s, float(t))
        j = r["sensitivity"] + r["specificity"] - 1.0
        if j > best_j + 1e-12:
            best_t, best_j = float(t), j
    return best_t


def threshold_for_sensitivity(
    y_true: Sequence[int] | npt.NDArray[np.int64], score: FloatArray, target: float = 0.9
) -> float:
    """The highest threshold whose sensitivity is >= ``target``."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        raise ValueError("a sensitivity target needs positive cases")
    s = np.asarray(score, dtype=np.float64)
    for t in _candidates(s)[::-1]:
        if rates(y, s, float(t))["sensitivity"] >= target - 1e-12:
            return float(t)
    return float(s.min())


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    threshold: float
    metrics: dict[str, Interval]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "threshold": self.threshold, "rule": RULE,
                **{k: v.to_json() for k, v in self.metrics.items()}}


def _interval(y: npt.NDArray[np.int64], s: FloatArray, t: float, resamples: Sequence[npt.NDArray[np.intp]],
              metric: str) -> Interval:
    estimate = rates(y, s, t)[metric]
    values = np.array([rates(y[idx], s[idx], t)[metric] for idx in resamples])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Interval(estimate, math.nan, math.nan)
    low, high = np.quantile(values, [0.025, 0.975])
    return Interval(estimate, float(low), float(high))


def operating_points(
    choose_y: Sequence[int] | npt.NDArray[np.int64],
    choose_score: FloatArray,
    eval_y: Sequence[int] | npt.NDArray[np.int64],
    eval_score: FloatArray,
    eval_groups: Sequence[str] | npt.NDArray[np.str_],
    *,
    target_sensitivity: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[OperatingPoint]:
    """The Youden and fixed-sensitivity points chosen on one set and measured, with CIs, on another."""
    y_eval = np.asarray(eval_y, dtype=np.int64)
    s_eval = np.asarray(eval_score, dtype=np.float64)
    resamples = patient_resamples(np.asarray(eval_groups), n_boot, seed)
    out = []
    for name, t in (
        ("Youden", youden_threshold(choose_y, choose_score)),
        (f"sensitivity >= {target_sensitivity:.2f}", threshold_for_sensitivity(choose_y, choose_score,
                                                                              target_sensitivity)),
    ):
        out.append(OperatingPoint(name, t, {m: _interval(y_eval, s_eval, t, resamples, m) for m in METRICS}))
    return out
