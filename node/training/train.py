"""Training: grouped-CV grid search, optional nested CV, and the refit of the chosen pipeline on all data.

The chosen candidate is the one with the best mean CV score (accuracy unless configured); it is refitted on
every training lesion with balanced sample weights. The CV score of the chosen candidate carries selection
optimism (it also served to choose); ``nested=True`` adds the honest estimate (docs/method.md §8).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score, f1_score

from node.model.calibration import Calibrator
from node.model.tasks import Task
from node.training.calibrate import fit_calibrator, oof_probabilities
from node.training.cv import (
    NestedResult,
    PermutationResult,
    SearchResult,
    fit_pipeline,
    full_proba,
    grid_search,
    nested_cv,
    permutation_null,
    score,
)
from node.training.dataset import Dataset
from node.training.grid import GridName, StepSpec, describe_grid, grid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    task: Task
    seed: int = 0
    grid: GridName = "quick"
    scoring: str = "accuracy"
    nested: bool = False
    n_splits: int = 5
    progress: bool = True
    permutations: int = 0  # label-permutation null of the chosen candidate's CV score (0: not run)
    #: explicit (selectors, classifiers) instead of the named grid (tests, benchmarks)
    candidates: tuple[tuple[StepSpec, ...], tuple[StepSpec, ...]] | None = None
    #: fit a calibrator and confidence rule on patient-grouped CV (node.training.calibrate)
    calibrate: bool = True

    def search_space(self) -> tuple[list[StepSpec], list[StepSpec]]:
        if self.candidates is not None:
            return list(self.candidates[0]), list(self.candidates[1])
        return grid(self.grid)


@dataclass(frozen=True)
class TrainResult:
    """A fitted pipeline with everything the manifest and model card need to describe it."""

    options: TrainOptions
    pipeline: BaseEstimator
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    search: SearchResult
    nested: NestedResult | None
    permutation: PermutationResult | None
    data_summary: dict[str, object]
    apparent: dict[str, float]
    training_x: np.ndarray[Any, np.dtype[np.float64]]
    training_y: np.ndarray[Any, np.dtype[np.int64]]
    elapsed_s: float
    calibrator: Calibrator | None = None
    #: out-of-fold probabilities of the chosen candidate on the search's patient-grouped folds
    oof_proba: np.ndarray[Any, np.dtype[np.float64]] | None = None

    @property
    def selector_fit(self) -> dict[str, Any] | None:
        """What the refitted selector chose (LASSO: the C from grouped inner CV, how many features it kept)."""
        step = self.pipeline.named_steps["select"]
        return dict(step.summary()) if hasattr(step, "summary") else None

    def cv_training_auc(self) -> dict[str, Any] | None:
        """The cross-validated training-side AUC the GDI starts from: nested pooled AUC when nested CV ran,
        else the chosen candidate's out-of-fold AUC on the patient-grouped folds."""
        n_classes = len(self.classes)
        if self.nested is not None:
            return {"auc": score("roc_auc", self.training_y, self.nested.oof_proba, n_classes),
                    "source": "nested CV (pooled outer-fold probabilities)"}
        if self.oof_proba is None:
            return None
        return {"auc": score("roc_auc", self.training_y, self.oof_proba, n_classes),
                "source": f"out-of-fold probabilities of the chosen candidate, {self.search.n_splits} "
                "patient-grouped folds (the folds that also chose it: mildly optimistic)"}

    @property
    def selected_features(self) -> list[str]:
        support = self.pipeline.named_steps["select"].get_support(indices=True)
        return [self.feature_names[int(i)] for i in support]

    def metrics(self) -> dict[str, Any]:
        """Training-side metrics for the manifest: CV of the chosen candidate, per family, nested, apparent."""
        best = self.search.best
        out: dict[str, Any] = {
            "scoring": self.search.scoring,
            "cv_folds": self.search.n_splits,
            "cv_best": {"mean": best.mean, "sd": best.sd, "fold_scores": best.fold_scores},
            "cv_best_per_classifier": {
                kind: {
                    "mean": c.mean, "sd": c.sd,
                    "selector": c.selector.describe(), "classifier": c.classifier.describe(),
                }
                for kind, c in self.search.best_per_classifier().items()
            },
            "apparent": self.apparent,
            "cv_training_auc": self.cv_training_auc(),
            "note": "cv_best is the score that also chose the model (optimistic); nested is the honest estimate",
        }
        if self.nested is not None:
            n_classes = len(self.classes)
            y = self.training_y
            out["nested"] = {
                "scoring": self.nested.scoring,
                "mean": self.nested.mean,
                "sd": self.nested.sd,
                "outer_scores": self.nested.outer_scores,
                "chosen_per_outer_fold": self.nested.chosen,
                "pooled_accuracy": score("accuracy", y, self.nested.oof_proba, n_classes),
                "pooled_f1_macro": score("f1_macro", y, self.nested.oof_proba, n_classes),
                "pooled_auc": score("roc_auc", y, self.nested.oof_proba, n_classes),
            }
        if self.permutation is not None:
            out["permutation_null"] = self.permutation.to_json()
        return out


def train(data: Dataset, options: TrainOptions) -> TrainResult:
    """Search, optionally nest, and refit; deterministic for ``options.seed``."""
    start = time.perf_counter()
    selectors, classifiers = options.search_space()
    n_classes = len(data.classes)
    present = np.unique(data.y)
    if present.size < n_classes:
        missing = [data.classes[i] for i in range(n_classes) if i not in present]
        raise ValueError(f"the training table has no lesion of class(es) {', '.join(missing)}")
    logger.info(
        "training %s on %d lesions of %d patients: %d candidates (%s grid), scoring %s",
        options.task.value, data.y.size, data.n_patients, len(selectors) * len(classifiers),
        options.grid, options.scoring,
    )
    search = grid_search(
        data.x, data.y, data.groups, selectors, classifiers,
        n_classes=n_classes, seed=options.seed, scoring=options.scoring, n_splits=options.n_splits,
        progress=options.progress,
    )
    best = search.best
    logger.info("best: %s + %s, CV %s %.3f ± %.3f", best.selector.describe(), best.classifier.describe(),
                options.scoring, best.mean, best.sd)
    nested = None
    if options.nested:
        nested = nested_cv(
            data.x, data.y, data.groups, selectors, classifiers,
            n_classes=n_classes, seed=options.seed, scoring=options.scoring, n_splits=options.n_splits,
            progress=options.progress,
        )
        logger.info("nested CV %s %.3f ± %.3f", options.scoring, nested.mean, nested.sd)
    permutation = None
    if options.permutations > 0:
        permutation = permutation_null(
            data.x, data.y, data.groups, best.selector, best.classifier,
            n_classes=n_classes, seed=options.seed, scoring=options.scoring, n_splits=options.n_splits,
            n_permutations=options.permutations, progress=options.progress,
        )
        logger.info("permutation null: observed %.3f, null mean %.3f, p = %.3f", permutation.observed,
                    float(np.mean(permutation.null_scores)), permutation.p_value)
    pipeline = fit_pipeline(best.selector, best.classifier, data.x, data.y, n_classes, options.seed, data.groups)
    oof, folds = oof_probabilities(best.selector, best.classifier, data.x, data.y, data.groups,
                                   n_classes=n_classes, seed=options.seed, n_splits=options.n_splits)
    calibrator = fit_calibrator(data.y, oof, folds, data.classes) if options.calibrate else None
    proba = full_proba(pipeline, data.x, n_classes)
    pred = proba.argmax(axis=1)
    apparent = {
        "accuracy": float(accuracy_score(data.y, pred)),
        "f1_macro": float(f1_score(data.y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
        "auc": score("roc_auc", data.y, proba, n_classes),
    }
    summary = data.summary()
    summary["search_space"] = (
        describe_grid(options.grid)
        if options.candidates is None
        else {
            "name": "custom",
            "selectors": [s.to_json() for s in selectors],
            "classifiers": [c.to_json() for c in classifiers],
            "n_candidates": len(selectors) * len(classifiers),
        }
    )
    return TrainResult(
        options=options,
        pipeline=pipeline,
        feature_names=data.feature_names,
        classes=data.classes,
        search=search,
        nested=nested,
        permutation=permutation,
        data_summary=summary,
        apparent=apparent,
        training_x=data.x,
        training_y=data.y,
        elapsed_s=time.perf_counter() - start,
        calibrator=calibrator,
        oof_proba=oof,
    )
