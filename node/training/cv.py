"""Patient-grouped, stratified cross-validation: the grid search and nested CV (docs/method.md §1.5, §8).

Folds come from ``StratifiedGroupKFold`` on the patient id, so no patient contributes lesions to both sides of
a split. Inside each fold the scaler and selector are fitted on the training part only (once per selector,
then reused by every classifier, which is the same computation as fitting the whole Pipeline per candidate);
classifiers get balanced ``sample_weight`` computed on the training part. Candidate scores are fold means
(± SD). Nested CV repeats the whole search inside each outer training fold and scores the chosen pipeline on
the outer test fold, which is the honest estimate (tuning and model choice never see the test fold).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import RobustScaler
from sklearn.utils.class_weight import compute_sample_weight
from tqdm import tqdm
from xgboost.core import XGBoostError

from node.training.grid import StepSpec, make_classifier, make_selector, selector_fit_params

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Split = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]
SCORINGS = ("accuracy", "f1_macro", "balanced_accuracy", "roc_auc")
_FIT_ERRORS = (ValueError, IndexError, np.linalg.LinAlgError, XGBoostError)


def balanced_weights(y: IntArray) -> FloatArray:
    """Per-sample weights inversely proportional to class frequency (mean 1)."""
    return np.asarray(compute_sample_weight("balanced", y), dtype=np.float64)


def n_splits_for(y: IntArray, groups: npt.NDArray[np.str_], requested: int = 5) -> int:
    """``requested``, reduced when the rarest class has fewer patients than folds (≥ 2)."""
    per_class = [np.unique(groups[y == c]).size for c in np.unique(y)]
    n = max(2, min(requested, min(per_class)))
    if n < requested:
        logger.warning(
            "only %d patient(s) in the rarest class: using %d folds instead of %d", min(per_class), n, requested
        )
    return n


def grouped_folds(y: IntArray, groups: npt.NDArray[np.str_], n_splits: int, seed: int) -> list[Split]:
    """Stratified, patient-grouped folds, shuffled with ``seed``."""
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(np.zeros(y.size), y, groups)]


def full_proba(model: BaseEstimator, x: FloatArray, n_classes: int) -> FloatArray:
    """``predict_proba`` with one column per task class, even if a class was absent from the training part."""
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    seen = np.asarray(model.classes_, dtype=np.int64)
    if seen.size == n_classes:
        return proba
    if proba.shape[1] != seen.size:  # one class only in the training part: some boosters still give 2 columns
        proba = np.ones((x.shape[0], 1)) if seen.size == 1 else proba[:, : seen.size]
    out = np.zeros((x.shape[0], n_classes))
    out[:, seen] = proba
    return out


def score(scoring: str, y: IntArray, proba: FloatArray, n_classes: int) -> float:
    """The model-selection score from probabilities (the prediction is the arg-max)."""
    pred = proba.argmax(axis=1)
    if scoring == "accuracy":
        return float(accuracy_score(y, pred))
    if scoring == "balanced_accuracy":
        return float(balanced_accuracy_score(y, pred))
    if scoring == "f1_macro":
        return float(f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0))
    if scoring == "roc_auc":
        if np.unique(y).size < 2:
            return float("nan")
        if n_classes == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        present = np.unique(y)
        aucs = [roc_auc_score(y == c, proba[:, c]) for c in present]
        return float(np.mean(aucs))
    raise ValueError(f"unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}")


@dataclass
class CandidateResult:
    """CV outcome of one (selector, classifier) candidate."""

    selector: StepSpec
    classifier: StepSpec
    fold_scores: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        finite = [s for s in self.fold_scores if np.isfinite(s)]
        return float(np.mean(finite)) if len(finite) == len(self.fold_scores) and finite else float("-inf")

    @property
    def sd(self) -> float:
        return float(np.std(self.fold_scores, ddof=1)) if len(self.fold_scores) > 1 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "selector": self.selector.to_json(),
            "classifier": self.classifier.to_json(),
            "fold_scores": [round(s, 6) if np.isfinite(s) else None for s in self.fold_scores],
            "mean": self.mean if np.isfinite(self.mean) else None,
            "sd": self.sd if np.isfinite(self.sd) else None,
        }


@dataclass(frozen=True)
class SearchResult:
    candidates: list[CandidateResult]
    n_splits: int
    scoring: str

    @property
    def best(self) -> CandidateResult:
        """Highest mean score; ties go to the lower SD, then to the earlier (simpler) grid entry."""
        order = sorted(
            range(len(self.candidates)),
            key=lambda i: (-self.candidates[i].mean, self.candidates[i].sd, i),
        )
        best = self.candidates[order[0]]
        if not np.isfinite(best.mean):
            raise ValueError("every candidate pipeline failed in cross-validation")
        return best

    def best_per_classifier(self) -> dict[str, CandidateResult]:
        """The best candidate of each classifier family (the S1-style comparison table)."""
        out: dict[str, CandidateResult] = {}
        for cand in sorted(self.candidates, key=lambda c: (-c.mean, c.sd)):
            out.setdefault(cand.classifier.kind, cand)
        return out


def _quiet(fit: Callable[..., object], *args: object, **kwargs: object) -> bool:
    """Run a fit, silencing library warnings; False if it failed on this fold's data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit(*args, **kwargs)
        except _FIT_ERRORS as exc:
            logger.debug("fit failed: %s", exc)
            return False
    return True


def grid_search(
    x: FloatArray,
    y: IntArray,
    groups: npt.NDArray[np.str_],
    selectors: Sequence[StepSpec],
    classifiers: Sequence[StepSpec],
    *,
    n_classes: int,
    seed: int,
    scoring: str = "accuracy",
    n_splits: int = 5,
    progress: bool = True,
    desc: str = "grid search",
) -> SearchResult:
    """Score every selector × classifier by stratified, patient-grouped CV."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}")
    n_splits = n_splits_for(y, groups, n_splits)
    splits = grouped_folds(y, groups, n_splits, seed)
    results = [CandidateResult(s, c) for s in selectors for c in classifiers]
    total = len(splits) * len(results)
    with tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="fit") as bar:
        for train, test in splits:
            scaler = RobustScaler().fit(x[train])
            xs_train, xs_test = scaler.transform(x[train]), scaler.transform(x[test])
            weights = balanced_weights(y[train])
            for si, sel_spec in enumerate(selectors):
                selector = make_selector(sel_spec, x.shape[1], n_classes, seed)
                ok = _quiet(selector.fit, xs_train, y[train], **selector_fit_params(sel_spec, groups[train]))
                xt_train = selector.transform(xs_train) if ok else None
                if xt_train is not None and xt_train.shape[1] == 0:
                    xt_train = None
                for ci, clf_spec in enumerate(classifiers):
                    cand = results[si * len(classifiers) + ci]
                    value = float("nan")
                    if xt_train is not None:
                        xt_test = selector.transform(xs_test)
                        clf = make_classifier(clf_spec, n_classes, seed)
                        fit_ok = _quiet(clf.fit, xt_train, y[train], sample_weight=weights)
                        if fit_ok:
                            value = score(scoring, y[test], full_proba(clf, xt_test, n_classes), n_classes)
                    cand.fold_scores.append(value)
                    bar.update(1)
    return SearchResult(results, n_splits, scoring)


def fit_pipeline(
    selector: StepSpec, classifier: StepSpec, x: FloatArray, y: IntArray, n_classes: int, seed: int,
    groups: npt.NDArray[np.str_] | None = None,
) -> BaseEstimator:
    """Fit the full Pipeline (scaler → selector → classifier) on all of ``x`` with balanced sample weights;
    ``groups`` (patient ids) reach the selector's inner CV where it has one (LASSO)."""
    from node.training.grid import make_pipeline

    pipe = make_pipeline(selector, classifier, x.shape[1], n_classes, seed)
    routed = {f"select__{k}": v for k, v in selector_fit_params(selector, groups).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(x, y, clf__sample_weight=balanced_weights(y), **routed)
    return pipe


@dataclass(frozen=True)
class NestedResult:
    """Outer-fold scores of the whole search-and-refit procedure, and its out-of-fold probabilities."""

    outer_scores: list[float]
    oof_proba: FloatArray
    chosen: list[str]
    scoring: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.outer_scores))

    @property
    def sd(self) -> float:
        return float(np.std(self.outer_scores, ddof=1)) if len(self.outer_scores) > 1 else 0.0


def nested_cv(
    x: FloatArray,
    y: IntArray,
    groups: npt.NDArray[np.str_],
    selectors: Sequence[StepSpec],
    classifiers: Sequence[StepSpec],
    *,
    n_classes: int,
    seed: int,
    scoring: str = "accuracy",
    n_splits: int = 5,
    progress: bool = True,
) -> NestedResult:
    """Nested CV: the grid search runs inside each outer training fold; the outer fold only scores."""
    n_outer = n_splits_for(y, groups, n_splits)
    oof = np.full((y.size, n_classes), np.nan)
    scores: list[float] = []
    chosen: list[str] = []
    outer = grouped_folds(y, groups, n_outer, seed + 1)
    for k, (train, test) in enumerate(tqdm(outer, desc="nested CV", disable=not progress, unit="outer fold")):
        inner = grid_search(
            x[train], y[train], groups[train], selectors, classifiers,
            n_classes=n_classes, seed=seed, scoring=scoring, n_splits=n_splits, progress=progress,
            desc=f"inner search {k + 1}/{len(outer)}",
        )
        best = inner.best
        model = fit_pipeline(best.selector, best.classifier, x[train], y[train], n_classes, seed, groups[train])
        proba = full_proba(model, x[test], n_classes)
        oof[test] = proba
        scores.append(score(scoring, y[test], proba, n_classes))
        chosen.append(f"{best.selector.describe()} + {best.classifier.describe()}")
    return NestedResult(scores, oof, chosen, scoring)




@dataclass(frozen=True)
class PermutationResult:
    """CV score of the chosen candidate on the real labels against a label-permutation null."""

    observed: float
    null_scores: list[float]
    scoring: str

    @property
    def p_value(self) -> float:
        """(1 + #null ≥ observed) / (1 + N): the usual permutation p-value, never 0."""
        null = np.asarray(self.null_scores)
        return float((1 + np.sum(null >= self.observed)) / (1 + null.size))

    def to_json(self) -> dict[str, object]:
        null = np.asarray(self.null_scores)
        return {
            "scoring": self.scoring,
            "observed": self.observed,
            "n_permutations": int(null.size),
            "null_mean": float(null.mean()),
            "null_sd": float(null.std(ddof=1)) if null.size > 1 else 0.0,
            "null_95th_percentile": float(np.quantile(null, 0.95)),
            "p_value": self.p_value,
            "note": "labels permuted across patients (one label per patient); the chosen candidate is re-scored "
            "by the same grouped CV, without repeating the whole search",
        }


def _permute_by_patient(y: IntArray, groups: npt.NDArray[np.str_], rng: np.random.Generator) -> IntArray:
    """Shuffle labels between patients: each patient takes over another patient's lesion labels (first lesion)."""
    patients, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    donor = rng.permutation(patients.size)
    return np.asarray(y[first][donor][inverse], dtype=np.int64)


def permutation_null(
    x: FloatArray,
    y: IntArray,
    groups: npt.NDArray[np.str_],
    selector: StepSpec,
    classifier: StepSpec,
    *,
    n_classes: int,
    seed: int,
    scoring: str = "accuracy",
    n_splits: int = 5,
    n_permutations: int = 100,
    progress: bool = True,
) -> PermutationResult:
    """Grouped-CV score of one candidate on the real labels and on ``n_permutations`` patient-level permutations."""
    def cv_score(labels: IntArray) -> float:
        result = grid_search(x, labels, groups, [selector], [classifier], n_classes=n_classes, seed=seed,
                             scoring=scoring, n_splits=n_splits, progress=False)
        return result.candidates[0].mean

    rng = np.random.default_rng(seed)
    observed = cv_score(y)
    null: list[float] = []
    for _ in tqdm(range(n_permutations), desc="permutation null", disable=not progress, unit="perm"):
        permuted = _permute_by_patient(y, groups, rng)
        if np.unique(permuted).size < n_classes:
            continue
        null.append(cv_score(permuted))
    finite = [s for s in null if np.isfinite(s)]
    return PermutationResult(observed, finite, scoring)
