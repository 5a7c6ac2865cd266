"""LASSO feature selection with the penalty chosen by patient-grouped inner cross-validation.

The selector fits L1-penalised logistic regressions (``liblinear``) of one class against the rest: one head for
a binary task, one per class for a multi-class task (the union of the heads' features is kept; one shared C
over one-vs-rest heads let the weakest head's loss drag every head to a loose penalty). Each head walks a path
of 16 values of C, from the largest penalty at which every coefficient is zero (the intercept left free) up to
1000 times that value, each scored by the validation log loss over stratified, patient-grouped inner folds
(``StratifiedGroupKFold`` on the patient ids passed to ``fit``; the same folds for every head), so no patient is
on both sides of an inner split. The chosen C follows the one-standard-error rule of glmnet's ``lambda.1se``:
the strongest penalty whose mean inner loss is within one standard error of the best mean loss
(``rule="min"`` takes the best mean). The model refitted on all rows with that C keeps the features with a
non-zero coefficient: the penalty, not a cap, decides how many. A safety cap (``max_features``, 100 by
default, far above what the penalty keeps in practice) keeps the largest coefficients should the penalty keep
more; whether it bound is recorded (``capped_``). When the chosen penalty keeps no feature, the first feature
to enter the path is kept, so a pipeline always has an input (recorded in ``note_``).

Without ``groups`` every row counts as its own patient (logged as a warning): callers that know the patients
pass them (``Pipeline.fit(..., select__groups=groups)``).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Split = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]
N_CS = 16
C_SPAN_DECADES = 3.0
RULES = ("1se", "min")
INTERCEPT_SCALING = 100.0  # liblinear penalises the intercept: scaled up, its penalty becomes negligible


def inner_splits(y: npt.ArrayLike, groups: npt.ArrayLike, n_splits: int, seed: int) -> list[Split]:
    """Stratified, patient-grouped inner folds (fewer when the rarest class has fewer patients)."""
    y_arr, g_arr = np.asarray(y), np.asarray(groups)
    per_class = [np.unique(g_arr[y_arr == c]).size for c in np.unique(y_arr)]
    n = max(2, min(n_splits, min(per_class)))
    cv = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(np.zeros(y_arr.size), y_arr, g_arr)]


class GroupedLassoSelector(SelectorMixin, BaseEstimator):  # type: ignore[misc]
    """L1 logistic selection whose C is chosen on patient-grouped inner folds (see the module docstring)."""

    def __init__(self, max_features: int = 100, inner_folds: int = 5, rule: str = "1se", seed: int = 0) -> None:
        self.max_features = max_features
        self.inner_folds = inner_folds
        self.rule = rule
        self.seed = seed

    def _model(self, c: float) -> LogisticRegression:
        return LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", max_iter=2000, tol=1e-4,
                                  intercept_scaling=INTERCEPT_SCALING, random_state=self.seed)

    def _coef(self, x: FloatArray, target: npt.NDArray[np.bool_], c: float) -> FloatArray:
        model = self._model(c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, target.astype(np.int64))
        return np.asarray(model.coef_[0], dtype=np.float64)

    def _head(self, x: FloatArray, target: npt.NDArray[np.bool_], splits: list[Split]) -> dict[str, Any]:
        """One binary LASSO (a class against the rest): C path, inner losses, chosen C and its coefficients."""
        t = target.astype(np.float64)
        c0 = 1.0 / max(float(np.max(np.abs(x.T @ (t - t.mean())))), 1e-12)  # first feature enters (free intercept)
        cs = np.asarray(c0 * np.logspace(0.0, C_SPAN_DECADES, N_CS), dtype=np.float64)
        losses = np.zeros((len(splits), cs.size))
        for f, (tr, va) in enumerate(splits):
            prior = float(np.clip(target[tr].mean(), 1e-6, 1 - 1e-6))
            for j, c in enumerate(cs):
                if target[tr].all() or not target[tr].any():
                    p = np.full(va.size, prior)
                else:
                    model = self._model(float(c))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(x[tr], target[tr].astype(np.int64))
                    p = model.predict_proba(x[va])[:, 1]
                p = np.clip(p, 1e-12, 1 - 1e-12)
                losses[f, j] = -float(np.mean(np.where(target[va], np.log(p), np.log(1 - p))))
        mean = losses.mean(axis=0)
        se = losses.std(axis=0, ddof=1) / math.sqrt(len(splits))
        best = int(np.argmin(mean))
        chosen = best if self.rule == "min" else int(np.flatnonzero(mean <= mean[best] + se[best])[0])
        return {"cs": cs, "losses": losses, "chosen": chosen, "C": float(cs[chosen]),
                "coef": np.abs(self._coef(x, target, float(cs[chosen])))}

    def fit(self, x: npt.ArrayLike, y: npt.ArrayLike, groups: npt.ArrayLike | None = None) -> GroupedLassoSelector:
        if self.rule not in RULES:
            raise ValueError(f"unknown LASSO rule {self.rule!r}; use one of {', '.join(RULES)}")
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.int64)
        if groups is None:
            logger.warning("LASSO selector fitted without patient ids: each lesion counts as its own patient")
            groups = np.arange(ya.size).astype(str)
        ga = np.asarray(groups)
        classes = np.unique(ya)
        if classes.size < 2:
            raise ValueError("the LASSO selector needs at least two classes")
        self.n_features_in_ = xa.shape[1]
        splits = inner_splits(ya, ga, self.inner_folds, self.seed)
        positives = [classes[1]] if classes.size == 2 else list(classes)
        heads = [self._head(xa, ya == k, splits) for k in positives]
        coef = np.max(np.vstack([h["coef"] for h in heads]), axis=0)
        nonzero = np.flatnonzero(coef > 1e-10)
        self.note_ = ""
        if nonzero.size == 0:
            head = heads[0]
            for c in head["cs"][head["chosen"] + 1:]:
                coef = np.abs(self._coef(xa, ya == positives[0], float(c)))
                if np.any(coef > 1e-10):
                    break
            nonzero = np.array([int(np.argmax(coef))])
            self.note_ = "the chosen penalty kept no feature: the first feature to enter the path was kept"
        order = nonzero[np.argsort(-coef[nonzero], kind="stable")]
        self.n_kept_by_penalty_ = 0 if self.note_ else int(nonzero.size)
        self.capped_ = bool(order.size > self.max_features)
        keep = np.sort(order[: self.max_features])
        self.support_ = np.zeros(xa.shape[1], dtype=bool)
        self.support_[keep] = True
        self.heads_ = heads
        self.head_classes_ = [int(k) for k in positives]
        self.C_ = heads[0]["C"] if len(heads) == 1 else [h["C"] for h in heads]
        self.splits_ = splits
        return self

    def _get_support_mask(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.support_, dtype=bool)

    def summary(self) -> dict[str, Any]:
        """What the penalty chose, for the manifest and the model card."""
        return {
            "method": "L1 logistic regression (liblinear; one class against the rest per head for multi-class, "
            f"union of the heads' features), C chosen per head by patient-grouped {len(self.splits_)}-fold inner "
            f"CV on log loss, rule '{self.rule}'"
            + (" (strongest penalty within one SE of the best)" if self.rule == "1se" else ""),
            "chosen_C": self.C_,
            "head_classes": self.head_classes_,
            "n_C": N_CS,
            "inner_folds": len(self.splits_),
            "n_kept_by_penalty": self.n_kept_by_penalty_,
            "n_selected": int(self.support_.sum()),
            "safety_cap": self.max_features,
            "cap_bound": self.capped_,
            "note": self.note_,
        }
