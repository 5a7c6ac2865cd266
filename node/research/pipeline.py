"""One recipe model, fitted on a training part only: ComBat → RobustScaler → selection steps → classifier.

:class:`FoldModel` is the leakage boundary: every learned step (harmonisation estimates, scaler, univariate
filter, Boruta, the LASSO penalty, the classifier) is fitted inside :meth:`FoldModel.fit` on the rows it is
given, and applied unchanged by :meth:`FoldModel.predict_proba`. The cross-validation in
:mod:`node.research.run` builds a fresh one per fold, so no test row ever reaches a fitted step.

Libraries: ComBat by ``neuroCombat`` 0.2.12 (``neuroCombat`` on the training part, ``neuroCombatFromTraining``
for new rows), Boruta by ``boruta`` 0.4.3 (``BorutaPy``), the LASSO penalty by scikit-learn's
``LogisticRegressionCV`` over patient-grouped inner folds, Wilcoxon rank-sum / Kruskal-Wallis by SciPy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import kruskal, mannwhitneyu
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import RobustScaler
from sklearn.svm import SVC

from node.research.recipe import Step
from node.training.cv import balanced_weights, full_proba
from node.training.grid import StepSpec, make_classifier, make_selector

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
StrArray = npt.NDArray[np.str_]


@dataclass(frozen=True)
class ModelSpec:
    """A candidate: a feature set (column indices) and either recipe steps or an S1 grid candidate."""

    feature_set: str
    columns: tuple[int, ...]
    selection: tuple[Step, ...] = ()
    classifier: Step | None = None
    grid_candidate: tuple[StepSpec, StepSpec] | None = None

    def describe(self) -> str:
        if self.grid_candidate is not None:
            sel, clf = self.grid_candidate
            return f"{sel.describe()} + {clf.describe()}"
        steps = [s.describe() for s in self.selection]
        assert self.classifier is not None
        return " → ".join([*steps, self.classifier.describe()])

    @property
    def label(self) -> str:
        kind = self.grid_candidate[1].kind if self.grid_candidate is not None else (self.classifier or Step("?")).kind
        return f"{self.feature_set}: {kind}"


class ComBat:
    """ComBat location/scale harmonisation by batch, estimates from the training part only."""

    def __init__(self) -> None:
        self.estimates: dict[str, Any] | None = None
        self.batches: set[str] = set()

    def fit_transform(self, x: FloatArray, batch: StrArray) -> FloatArray:
        levels, counts = np.unique(batch, return_counts=True)
        if levels.size < 2 or counts.min() < 2:
            logger.warning("ComBat skipped in this fold: needs >= 2 batches with >= 2 rows each (%s)",
                           dict(zip(levels.tolist(), counts.tolist(), strict=True)))
            return x
        from neuroCombat import neuroCombat

        covars = pd.DataFrame({"batch": batch.astype(str)})
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = neuroCombat(dat=x.T, covars=covars, batch_col="batch")
        self.estimates = out["estimates"]
        self.batches = set(levels.tolist())
        return np.asarray(out["data"], dtype=np.float64).T

    def transform(self, x: FloatArray, batch: StrArray) -> FloatArray:
        if self.estimates is None:
            return x
        from neuroCombat import neuroCombatFromTraining

        known = np.array([b in self.batches for b in batch.astype(str)])
        out = x.copy()
        if (~known).any():
            logger.warning("ComBat: %d row(s) from a batch unseen in training left unharmonised", int((~known).sum()))
        if known.any():
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = neuroCombatFromTraining(dat=x[known].T, batch=batch[known].astype(str),
                                              estimates=self.estimates)
            out[known] = np.asarray(res["data"], dtype=np.float64).T
        return out


def grouped_splits(y: IntArray, groups: StrArray, n_splits: int, seed: int) -> list[tuple[IntArray, IntArray]]:
    per_class = [np.unique(groups[y == c]).size for c in np.unique(y)]
    n = max(2, min(n_splits, min(per_class)))
    cv = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
            for a, b in cv.split(np.zeros(y.size), y, groups)]


def _wilcoxon(x: FloatArray, y: IntArray, alpha: float) -> IntArray:
    classes = np.unique(y)
    pvals = np.ones(x.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(x.shape[1]):
            col = x[:, j]
            if np.ptp(col) == 0:
                continue
            if classes.size == 2:
                pvals[j] = mannwhitneyu(col[y == classes[0]], col[y == classes[1]]).pvalue
            else:
                pvals[j] = kruskal(*(col[y == c] for c in classes)).pvalue
    keep = np.flatnonzero(pvals < alpha)
    if keep.size == 0:  # nothing passes: keep the few most different, so the next step has input
        keep = np.sort(np.argsort(pvals)[: min(5, x.shape[1])])
    return keep.astype(np.int64)


def _boruta(x: FloatArray, y: IntArray, params: dict[str, Any], seed: int) -> IntArray:
    from boruta import BorutaPy

    forest = RandomForestClassifier(n_estimators=int(params.get("n_estimators", 100)), max_depth=5, n_jobs=1,
                                    class_weight="balanced", random_state=seed)
    selector = BorutaPy(forest, n_estimators=int(params.get("n_estimators", 100)),
                        max_iter=int(params.get("max_iter", 50)), random_state=seed, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selector.fit(x, y)
    ranking = np.asarray(selector.ranking_)
    confirmed = np.flatnonzero(np.asarray(selector.support_))
    cap = int(params.get("max_features") or x.shape[1])
    keep = confirmed if confirmed.size else np.flatnonzero(np.asarray(selector.support_weak_))
    if keep.size == 0:  # nothing confirmed nor tentative: the best-ranked features
        keep = np.argsort(ranking, kind="stable")[: min(3, x.shape[1])]
    keep = keep[np.argsort(ranking[keep], kind="stable")][:cap]
    return np.sort(keep).astype(np.int64)


def _lasso(x: FloatArray, y: IntArray, groups: StrArray, params: dict[str, Any], seed: int) -> IntArray:
    """L1 logistic regression, C chosen by patient-grouped inner CV (log-loss); non-zero coefficients kept."""
    splits = grouped_splits(y, groups, int(params.get("inner_folds", 5)), seed)
    model = LogisticRegressionCV(Cs=np.logspace(-2, 1, 12).tolist(), cv=splits, l1_ratios=(1.0,), solver="saga",
                                 scoring="neg_log_loss", max_iter=3000, tol=1e-3, random_state=seed,
                                 class_weight="balanced")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
    weight = np.abs(np.asarray(model.coef_)).max(axis=0)
    keep = np.flatnonzero(weight > 1e-8)
    cap = int(params.get("max_features") or x.shape[1])
    if keep.size == 0:
        keep = np.argsort(-weight, kind="stable")[:1]
    keep = keep[np.argsort(-weight[keep], kind="stable")][:cap]
    return np.sort(keep).astype(np.int64)


def _kbest(x: FloatArray, y: IntArray, params: dict[str, Any]) -> IntArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f, _ = f_classif(x, y)
    f = np.nan_to_num(np.asarray(f, dtype=np.float64), nan=0.0)
    k = min(int(params.get("k", 10)), x.shape[1])
    return np.sort(np.argsort(-f, kind="stable")[:k]).astype(np.int64)


def make_recipe_classifier(step: Step, seed: int) -> BaseEstimator:
    p = dict(step.params)
    if step.kind == "logistic":
        return LogisticRegression(C=float(p.get("C", 1.0)), max_iter=3000, class_weight="balanced",
                                  random_state=seed)
    if step.kind == "random_forest":
        depth = p.get("max_depth")
        return RandomForestClassifier(n_estimators=int(p.get("n_estimators", 200)),
                                      max_depth=None if depth is None else int(depth), n_jobs=1,
                                      class_weight="balanced", random_state=seed)
    if step.kind == "svm":
        return SVC(C=float(p.get("C", 1.0)), kernel=str(p.get("kernel", "rbf")), probability=True,
                   class_weight="balanced", random_state=seed)
    raise ValueError(f"unknown classifier kind {step.kind!r}")


class FoldModel:
    """A recipe candidate fitted on one training part (see the module docstring)."""

    def __init__(self, spec: ModelSpec, n_classes: int, seed: int, combat: bool) -> None:
        self.spec = spec
        self.n_classes = n_classes
        self.seed = seed
        self.combat: ComBat | None = ComBat() if combat else None
        self.scaler = RobustScaler()
        self.kept: IntArray = np.arange(len(spec.columns), dtype=np.int64)
        self.selector: BaseEstimator | None = None
        self.clf: BaseEstimator | None = None

    def _prepare(self, x: FloatArray, batch: StrArray, fit: bool) -> FloatArray:
        xs = x[:, list(self.spec.columns)]
        if self.combat is not None:
            xs = self.combat.fit_transform(xs, batch) if fit else self.combat.transform(xs, batch)
        return np.asarray(self.scaler.fit_transform(xs) if fit else self.scaler.transform(xs), dtype=np.float64)

    def fit(self, x: FloatArray, y: IntArray, groups: StrArray, batch: StrArray,
            cache: dict[Any, Any] | None = None) -> FoldModel:
        """Fit every step on these rows. ``cache`` shares the fitted preparation and selection between
        candidates that differ only in their classifier (same rows, columns and selection: same result)."""
        key = (self.spec.columns, tuple(st.describe() for st in self.spec.selection),
               None if self.spec.grid_candidate is None else self.spec.grid_candidate[0],
               hash(x.tobytes()), hash(y.tobytes()))
        if cache is not None and key in cache:
            self.combat, self.scaler, self.selector, self.kept, xt = cache[key]
        else:
            xt = self._fit_selection(x, y, groups, batch)
            if cache is not None:
                cache[key] = (self.combat, self.scaler, self.selector, self.kept, xt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.spec.grid_candidate is not None:
                self.clf = make_classifier(self.spec.grid_candidate[1], self.n_classes, self.seed)
                self.clf.fit(xt, y, sample_weight=balanced_weights(y))
            else:
                assert self.spec.classifier is not None
                self.clf = make_recipe_classifier(self.spec.classifier, self.seed)
                self.clf.fit(xt, y)
        return self

    def _fit_selection(self, x: FloatArray, y: IntArray, groups: StrArray, batch: StrArray) -> FloatArray:
        xs = self._prepare(x, batch, fit=True)
        if self.spec.grid_candidate is not None:
            self.selector = make_selector(self.spec.grid_candidate[0], xs.shape[1], self.n_classes, self.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xt = np.asarray(self.selector.fit_transform(xs, y), dtype=np.float64)
            self.kept = np.flatnonzero(np.asarray(self.selector.get_support())).astype(np.int64)
            if xt.shape[1] == 0:
                raise ValueError("the selector kept no feature")
            return xt
        kept = np.arange(xs.shape[1], dtype=np.int64)
        for step in self.spec.selection:
            sub = xs[:, kept]
            params = dict(step.params)
            if step.kind == "wilcoxon":
                local = _wilcoxon(sub, y, float(params.get("alpha", 0.05)))
            elif step.kind == "boruta":
                local = _boruta(sub, y, params, self.seed)
            elif step.kind == "lasso":
                local = _lasso(sub, y, groups, params, self.seed)
            else:
                local = _kbest(sub, y, params)
            kept = kept[local]
        self.kept = kept
        return xs[:, kept]

    def model_input(self, x: FloatArray, batch: StrArray) -> FloatArray:
        """What the classifier sees for rows ``x`` (after harmonisation, scaling and selection)."""
        xs = self._prepare(x, batch, fit=False)
        if self.selector is not None:
            return np.asarray(self.selector.transform(xs), dtype=np.float64)
        return xs[:, self.kept]

    def predict_proba(self, x: FloatArray, batch: StrArray) -> FloatArray:
        if self.clf is None:
            raise RuntimeError("FoldModel.predict_proba before fit")
        return full_proba(self.clf, self.model_input(x, batch), self.n_classes)

    def kept_names(self, names: Sequence[str]) -> list[str]:
        return [names[self.spec.columns[i]] for i in self.kept]
