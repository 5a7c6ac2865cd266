"""Fitting the bundle's calibrator and confidence rule on patient-grouped cross-validation.

1. Out-of-fold probabilities of the chosen pipeline: the same stratified, patient-grouped folds as the grid
   search (:func:`node.training.cv.grouped_folds`), the whole pipeline refitted on each training part with
   balanced weights, exactly as the final model is fitted.
2. :class:`~node.model.calibration.Calibrator` (temperature and class biases over log-probabilities) fitted by
   unweighted maximum likelihood on all out-of-fold probabilities: calibrated to the *training prevalence*.
3. Honest "after" numbers: the calibrator is cross-fitted over the same folds (fitted on the other folds'
   out-of-fold probabilities, applied to this fold), so the before/after comparison is not in-sample.
4. The confidence rule: the lowest threshold t on the top calibrated probability (grid 0.40…0.95 in steps of
   0.05, at least 1/K) from which on every window [s, s + 0.10) of the grid (s ≥ t; windows with fewer than 5
   lesions are skipped) holds cross-fitted predictions that were right at least ``target_accuracy`` of the
   time (default 80 %); 1.0 (every prediction low confidence) when even the top window fails. A window, not
   everything above t, so that many very confident predictions do not hide unreliable ones just above t.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from node.model.calibration import Calibrator, ConfidenceRule, calibration_summary, softmax
from node.training.cv import fit_pipeline, full_proba, grouped_folds, n_splits_for
from node.training.grid import StepSpec

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TARGET_ACCURACY = 0.80
THRESHOLD_GRID = tuple(round(0.40 + 0.05 * i, 2) for i in range(12))  # 0.40 … 0.95
WINDOW = 0.10
MIN_WINDOW_LESIONS = 5
_RIDGE = 1e-3  # keeps T and the biases finite on separable folds


def oof_probabilities(
    selector: StepSpec, classifier: StepSpec, x: FloatArray, y: IntArray, groups: npt.NDArray[np.str_],
    *, n_classes: int, seed: int, n_splits: int = 5,
) -> tuple[FloatArray, list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]]:
    """Out-of-fold probabilities of one candidate over patient-grouped folds, and the folds."""
    folds = grouped_folds(y, groups, n_splits_for(y, groups, n_splits), seed)
    oof = np.full((y.size, n_classes), np.nan)
    for train, test in folds:
        pipe = fit_pipeline(selector, classifier, x[train], y[train], n_classes, seed, groups[train])
        oof[test] = full_proba(pipe, x[test], n_classes)
    return oof, folds


def _nll(params: FloatArray, logp: FloatArray, y: IntArray) -> float:
    temperature = math.exp(float(params[0]))
    bias = np.concatenate([[0.0], params[1:]])
    q = softmax(logp / temperature + bias[None, :])
    loss = -float(np.mean(np.log(np.clip(q[np.arange(y.size), y], 1e-12, 1.0))))
    return loss + _RIDGE * float(np.sum(params**2))


def fit_temperature_bias(y: IntArray, proba: FloatArray) -> tuple[float, tuple[float, ...]]:
    """Maximum-likelihood temperature and biases (first class 0) for raw probabilities ``proba``."""
    k = proba.shape[1]
    logp = np.log(np.clip(proba, 1e-9, 1.0))
    res = minimize(_nll, np.zeros(k), args=(logp, np.asarray(y, dtype=np.int64)), method="L-BFGS-B")
    params = np.asarray(res.x, dtype=np.float64)
    return float(math.exp(params[0])), (0.0, *(float(b) for b in params[1:]))


def choose_confidence(y: IntArray, calibrated: FloatArray, target: float = TARGET_ACCURACY) -> ConfidenceRule:
    """The lowest grid threshold from which on every populated window reaches ``target`` accuracy in CV."""
    k = calibrated.shape[1]
    top = calibrated.max(axis=1)
    right = calibrated.argmax(axis=1) == y
    rule = (
        f"low confidence when the top calibrated probability is below the threshold t: the lowest t in "
        f"{THRESHOLD_GRID[0]:.2f}..{THRESHOLD_GRID[-1]:.2f} (step 0.05, at least 1/{k}) such that, in "
        f"patient-grouped cross-validation, the predictions with a top probability in every window "
        f"[s, s+{WINDOW:.2f}) with s >= t were right at least {100 * target:.0f}% of the time (windows with fewer "
        f"than {MIN_WINDOW_LESIONS} lesions skipped; 1.00 when the top window fails)"
    )
    grid = [t for t in THRESHOLD_GRID if t >= 1.0 / k - 1e-9]
    ok = []
    for t in grid:
        sel = (top >= t - 1e-9) & (top < t + WINDOW - 1e-9)
        ok.append(sel.sum() < MIN_WINDOW_LESIONS or float(right[sel].mean()) >= target)
    threshold = 1.0
    for i in range(len(grid) - 1, -1, -1):  # walk down while every window from here up is reliable
        if not ok[i]:
            break
        threshold = grid[i]
    above = top >= threshold
    return ConfidenceRule(
        threshold=threshold,
        target_accuracy=target,
        rule=rule,
        cv_accuracy_at_or_above=float(right[above].mean()) if above.any() else None,
        cv_accuracy_below=float(right[~above].mean()) if (~above).any() else None,
        cv_fraction_at_or_above=float(above.mean()),
    )


def fit_calibrator(
    y: IntArray, oof: FloatArray, folds: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    classes: Sequence[str], *, target_accuracy: float = TARGET_ACCURACY,
) -> Calibrator:
    """The calibrator (all out-of-fold probabilities), its cross-fitted before/after numbers and the rule."""
    y = np.asarray(y, dtype=np.int64)
    temperature, bias = fit_temperature_bias(y, oof)
    crossfit = np.full_like(oof, np.nan)
    for _, test in folds:
        rest = np.setdiff1d(np.arange(y.size), test)
        t_f, b_f = fit_temperature_bias(y[rest], oof[rest])
        crossfit[test] = Calibrator(tuple(classes), t_f, b_f).apply(oof[test])
    counts = {c: int(np.sum(y == i)) for i, c in enumerate(classes)}
    prevalence = {c: counts[c] / y.size for c in classes}
    details: dict[str, Any] = {
        "fitted_on": "out-of-fold probabilities of the chosen pipeline, patient-grouped stratified CV, "
                     "unweighted maximum likelihood (calibrated to the training prevalence)",
        "prevalence_source": "training set",
        "class_counts": counts,
        "n_lesions": int(y.size),
        "cv_folds": len(folds),
        "before": calibration_summary(y, oof, classes),
        "after": calibration_summary(y, crossfit, classes),
        "after_note": "calibrator cross-fitted over the same folds (not in-sample)",
    }
    confidence = choose_confidence(y, crossfit, target_accuracy)
    logger.info("calibration: T %.3f, ECE %.3f -> %.3f, low-confidence threshold %.2f", temperature,
                details["before"]["ece"], details["after"]["ece"], confidence.threshold)
    return Calibrator(tuple(classes), temperature, bias, prevalence, confidence, details)


def calibrate_candidate(
    selector: StepSpec, classifier: StepSpec, x: FloatArray, y: IntArray, groups: npt.NDArray[np.str_],
    classes: Sequence[str], *, seed: int, n_splits: int = 5,
) -> Calibrator:
    """Out-of-fold probabilities of the candidate, then :func:`fit_calibrator`."""
    oof, folds = oof_probabilities(selector, classifier, x, y, groups, n_classes=len(classes), seed=seed,
                                   n_splits=n_splits)
    return fit_calibrator(y, oof, folds, classes)
