"""Run a recipe end to end: per task, a patient-grouped hold-out split, every candidate scored by patient-grouped
CV on the training part (out-of-fold probabilities), the best refit on the training part and measured on the
test part; optionally nested CV over all patients. Results are a JSON-able dict plus the arrays the figures need.

Honesty rules (docs/method.md §8): every fitted step is inside :class:`~node.research.pipeline.FoldModel`; the
GDI uses the *cross-validated* (out-of-fold) training AUC, never the refit model's apparent AUC; operating-point
thresholds are chosen on the out-of-fold training scores, then applied to the test part; all CIs resample
patients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.evaluation import stats
from node.evaluation.operating import operating_points
from node.research.columns import choose_columns, describe_column
from node.research.data import TaskData, load_task_data
from node.research.pipeline import FoldModel, ModelSpec, grouped_splits
from node.research.recipe import Recipe
from node.training.cv import score
from node.training.grid import GridName, grid

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass
class ModelOutcome:
    spec: ModelSpec
    fold_scores: list[float]
    oof: FloatArray  # out-of-fold probabilities on the training part
    test_proba: FloatArray | None = None
    kept: list[str] = field(default_factory=list)
    fold_kept: dict[str, int] = field(default_factory=dict)
    model: FoldModel | None = None

    @property
    def cv_sd(self) -> float:
        finite = [s for s in self.fold_scores if math.isfinite(s)]
        return float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0

    @property
    def cv_mean(self) -> float:
        finite = [s for s in self.fold_scores if math.isfinite(s)]
        return float(np.mean(finite)) if finite else -math.inf


@dataclass
class TaskRun:
    data: TaskData
    train: IntArray
    test: IntArray
    candidates: list[ModelOutcome]
    reported: list[ModelOutcome]
    best: ModelOutcome
    results: dict[str, Any]
    nested_oof: FloatArray | None = None
    shap: dict[str, float] | None = None
    shap_units: str = ""


def auc_of(y: IntArray, proba: FloatArray) -> float:
    """Binary AUC of the positive class, or the macro one-vs-rest AUC (classes present) for more classes."""
    return score("roc_auc", y, proba, proba.shape[1])


def _boot(fn: Callable[[npt.NDArray[np.intp]], float], groups: npt.NDArray[np.str_], n: int, n_boot: int,
          seed: int) -> dict[str, float]:
    def safe(idx: npt.NDArray[np.intp]) -> float:
        try:
            return fn(idx)
        except ValueError:
            return math.nan

    return stats.bootstrap_ci(safe, stats.patient_resamples(groups, n_boot, seed), n).to_json()


def _metrics(y: IntArray, proba: FloatArray, groups: npt.NDArray[np.str_], n_boot: int, seed: int) -> dict[str, Any]:
    k = proba.shape[1]
    pred = proba.argmax(axis=1).astype(np.int64)
    out: dict[str, Any] = {
        "auc": _boot(lambda i: auc_of(y[i], proba[i]), groups, y.size, n_boot, seed),
        "accuracy": _boot(stats.accuracy_of(y, pred), groups, y.size, n_boot, seed),
        "f1_macro": _boot(stats.f1_macro_of(y, pred, k), groups, y.size, n_boot, seed),
        "brier": stats.brier_score(y, proba[:, 1]) if k == 2 else stats.brier_multiclass(y, proba),
        "n_lesions": int(y.size),
        "n_patients": int(np.unique(groups).size),
    }
    return out


def _candidates(recipe: Recipe, data: TaskData) -> tuple[list[ModelSpec], dict[str, Any]]:
    stable = None
    info: dict[str, Any] = {}
    if data.icc is not None and recipe.icc_threshold is not None:
        stable = {n for n, v in data.icc.items() if math.isfinite(v) and v >= recipe.icc_threshold}
        info["icc"] = {"threshold": recipe.icc_threshold, "kind": "ICC(2,1) = ICC(A,1), absolute agreement (pingouin)",
                       "n_assessed": sum(math.isfinite(v) for v in data.icc.values()), "n_stable": len(stable),
                       "unstable": sorted(n for n, v in data.icc.items()
                                          if math.isfinite(v) and v < recipe.icc_threshold)[:20]}
    specs: list[ModelSpec] = []
    missing_all: dict[str, list[str]] = {}
    for set_name, regions in recipe.feature_sets.items():
        choice = choose_columns(data.names, recipe.images, recipe.log_sigmas_mm, regions)
        cols = [i for i in choice.indices
                if stable is None or describe_column(data.names[i]).image_type == "clinical" or data.names[i] in stable]
        if choice.missing:
            missing_all[set_name] = choice.missing
        if not cols:
            raise ValueError(f"feature set {set_name}: no usable column (missing: {', '.join(choice.missing)})")
        if recipe.grid is not None:
            grid_name: GridName = recipe.grid  # type: ignore[assignment]
            selectors, classifiers = grid(grid_name)
            specs += [ModelSpec(set_name, tuple(cols), grid_candidate=(s, c)) for s in selectors for c in classifiers]
        else:
            specs += [ModelSpec(set_name, tuple(cols), recipe.selection, c) for c in recipe.classifiers]
        info.setdefault("feature_sets", {})[set_name] = {"regions": list(regions), "n_columns": len(cols)}
    info["missing"] = missing_all
    return specs, info


def cross_validate(spec: ModelSpec, data: TaskData, rows: IntArray, recipe: Recipe, seed: int,
                   cache: dict[Any, Any] | None = None) -> ModelOutcome:
    """Out-of-fold probabilities of one candidate over patient-grouped folds of ``rows``."""
    y, groups = data.y[rows], data.groups[rows]
    batch = data.batch[rows] if data.batch is not None else np.full(rows.size, "", dtype=str)
    oof = np.full((rows.size, data.n_classes), np.nan)
    fold_scores: list[float] = []
    fold_kept: dict[str, int] = {}
    for tr, te in grouped_splits(y, groups, recipe.cv_folds, seed):
        model = FoldModel(spec, data.n_classes, seed, combat=data.batch is not None)
        try:
            model.fit(data.x[rows[tr]], y[tr], groups[tr], batch[tr], cache)
        except (ValueError, np.linalg.LinAlgError) as exc:
            logger.debug("candidate %s failed in a fold: %s", spec.describe(), exc)
            fold_scores.append(math.nan)
            continue
        proba = model.predict_proba(data.x[rows[te]], batch[te])
        oof[te] = proba
        fold_scores.append(score(recipe.scoring, y[te], proba, data.n_classes))
        for name in model.kept_names(data.names):
            fold_kept[name] = fold_kept.get(name, 0) + 1
    return ModelOutcome(spec, fold_scores, oof, fold_kept=fold_kept)


def _best(outcomes: list[ModelOutcome]) -> ModelOutcome:
    usable = [o for o in outcomes if np.isfinite(o.oof).all()]
    if not usable:
        raise ValueError("every candidate failed in cross-validation")
    order = sorted(range(len(usable)), key=lambda i: (-usable[i].cv_mean, i))
    return usable[order[0]]


def _fit_rows(spec: ModelSpec, data: TaskData, rows: IntArray, seed: int,
              cache: dict[Any, Any] | None = None) -> FoldModel:
    batch = data.batch[rows] if data.batch is not None else np.full(rows.size, "", dtype=str)
    return FoldModel(spec, data.n_classes, seed, combat=data.batch is not None).fit(
        data.x[rows], data.y[rows], data.groups[rows], batch, cache)


def _predict_rows(model: FoldModel, data: TaskData, rows: IntArray) -> FloatArray:
    batch = data.batch[rows] if data.batch is not None else np.full(rows.size, "", dtype=str)
    return model.predict_proba(data.x[rows], batch)


def _gdi(cv_auc: dict[str, float], test_auc: float) -> dict[str, Any]:
    train_auc, low = cv_auc["value"], cv_auc["ci95_low"]
    if not (math.isfinite(train_auc) and math.isfinite(test_auc)):
        return {"value": None, "zone": None, "interpretable": False, "note": "an AUC is undefined"}
    value, zone = stats.gdi(train_auc, test_auc)
    out: dict[str, Any] = {"value": value, "zone": zone, "auc_train_cv": train_auc, "auc_test": test_auc,
                           "interpretable": True, "note": "AUC_train is the out-of-fold (patient-grouped CV) AUC"}
    if not low > 0.5:
        out.update(interpretable=False, note="cannot be interpreted: the cross-validated training AUC does not "
                   "exceed chance (its 95 % CI includes 0.5), so there is no performance to decay")
    return out


def _delong_pair(y: IntArray, a: FloatArray, b: FloatArray) -> list[dict[str, Any]]:
    """DeLong of two models; multi-class: one-vs-rest per class."""
    out = []
    cols = [1] if a.shape[1] == 2 else list(range(a.shape[1]))
    for k in cols:
        yk = (y == k).astype(np.int64)
        if yk.min() == yk.max():
            continue
        res = stats.delong_test(yk, a[:, k], b[:, k])
        out.append({"class": int(k), **res.to_json()})
    return out


def _operating(data: TaskData, outcome: ModelOutcome, train: IntArray, test: IntArray, n_boot: int,
               seed: int) -> dict[str, Any]:
    assert outcome.test_proba is not None
    cols = [1] if data.n_classes == 2 else list(range(data.n_classes))
    out: dict[str, Any] = {}
    for k in cols:
        ytr = (data.y[train] == k).astype(np.int64)
        yte = (data.y[test] == k).astype(np.int64)
        if ytr.min() == ytr.max() or yte.min() == yte.max():
            continue
        pts = operating_points(ytr, outcome.oof[:, k], yte, outcome.test_proba[:, k], data.groups[test],
                               n_boot=n_boot, seed=seed)
        out[data.classes[k]] = [p.to_json() for p in pts]
    return out


def _baseline(data: TaskData, outcome: ModelOutcome, test: IntArray, n_boot: int, seed: int) -> dict[str, Any] | None:
    if data.baseline is None or outcome.test_proba is None:
        return None
    base_pred, definition = data.baseline
    y, groups = data.y[test], data.groups[test]
    bp = base_pred[test]
    pred = outcome.test_proba.argmax(axis=1).astype(np.int64)
    resamples = stats.patient_resamples(groups, n_boot, seed)
    gee = stats.gee_paired_accuracy(pred == y, bp == y, groups)
    f1 = stats.paired_bootstrap(stats.f1_macro_of(y, pred, data.n_classes), stats.f1_macro_of(y, bp, data.n_classes),
                                resamples, y.size)
    return {
        "definition": definition,
        "accuracy": stats.bootstrap_ci(stats.accuracy_of(y, bp), resamples, y.size).to_json(),
        "f1_macro": stats.bootstrap_ci(stats.f1_macro_of(y, bp, data.n_classes), resamples, y.size).to_json(),
        "accuracy_gee": gee.to_json(),
        "f1_macro_paired_bootstrap": f1.to_json(),
    }


def shap_units(clf: object) -> str:
    """What the SHAP values of :func:`_shap` add up to for this classifier."""
    kind = type(clf).__name__
    if kind in ("LogisticRegression", "XGBClassifier", "LGBMClassifier"):
        return "log-odds"
    return "probability"


def _shap(outcome: ModelOutcome, data: TaskData, train: IntArray, test: IntArray, seed: int) -> dict[str, float]:
    """Mean |SHAP| per kept feature on (up to 40) test lesions: LinearExplainer for LR, TreeExplainer for tree
    models, the permutation explainer of the probabilities otherwise (units: :func:`shap_units`)."""
    import shap

    model = outcome.model
    if model is None:
        return {}
    names = model.kept_names(data.names)
    batch_tr = data.batch[train] if data.batch is not None else np.full(train.size, "", dtype=str)
    batch_te = data.batch[test] if data.batch is not None else np.full(test.size, "", dtype=str)
    rng = np.random.default_rng(seed)
    bg = model.model_input(data.x[train], batch_tr)[rng.permutation(train.size)[:50]]
    xt = model.model_input(data.x[test], batch_te)[:40]
    clf = model.clf
    assert clf is not None

    def f(z: FloatArray) -> FloatArray:
        return np.asarray(clf.predict_proba(z), dtype=np.float64)

    kind = type(clf).__name__
    if kind == "LogisticRegression":
        explainer: Any = shap.LinearExplainer(clf, bg)
        raw = explainer(xt).values
    elif kind in ("RandomForestClassifier", "XGBClassifier", "LGBMClassifier"):
        raw = shap.TreeExplainer(clf).shap_values(xt, check_additivity=False)
    else:  # model-agnostic (SVM, AdaBoost): permutation over the kept features
        explainer = shap.Explainer(f, shap.maskers.Independent(bg), algorithm="permutation", seed=seed)
        raw = explainer(xt, max_evals=max(2 * xt.shape[1] + 1, 50), silent=True).values
    values = np.asarray(raw[1] if isinstance(raw, list) and len(raw) == 2 else raw, dtype=np.float64)
    if isinstance(raw, list) and len(raw) > 2:
        values = np.stack([np.asarray(v) for v in raw], axis=-1)
    mean_abs = np.abs(values).mean(axis=(0, 2)) if values.ndim == 3 else np.abs(values).mean(axis=0)
    ranked = sorted(zip(names, mean_abs.tolist(), strict=True), key=lambda kv: -kv[1])
    return dict(ranked[:20])


def run_task(recipe: Recipe, data: TaskData, *, nested: bool, seed: int, n_boot: int,
             with_shap: bool = True) -> TaskRun:
    specs, info = _candidates(recipe, data)
    n_test_folds = max(2, round(1.0 / recipe.test_fraction))
    train, test = grouped_splits(data.y, data.groups, n_test_folds, seed)[0]
    cache: dict[Any, Any] = {}
    outcomes = [cross_validate(s, data, train, recipe, seed, cache) for s in specs]
    best = _best(outcomes)
    # a grid recipe reports its chosen candidate; a recipe with a few named classifiers reports every one
    reported = [best] if recipe.grid is not None else [o for o in outcomes if np.isfinite(o.oof).all()]
    refit_cache: dict[Any, Any] = {}
    for o in reported:
        o.model = _fit_rows(o.spec, data, train, seed, refit_cache)
        o.test_proba = _predict_rows(o.model, data, test)
        o.kept = o.model.kept_names(data.names)
    ytr, yte = data.y[train], data.y[test]
    models: list[dict[str, Any]] = []
    for o in reported:
        assert o.test_proba is not None
        oof = o.oof
        cv_auc = _boot(lambda i: auc_of(ytr[i], oof[i]), data.groups[train], train.size, n_boot, seed)  # noqa: B023
        test_metrics = _metrics(yte, o.test_proba, data.groups[test], n_boot, seed)
        models.append({
            "label": o.spec.label, "pipeline": o.spec.describe(), "feature_set": o.spec.feature_set,
            "cv_scoring": recipe.scoring, "cv_fold_scores": o.fold_scores, "cv_mean": o.cv_mean,
            "cv_sd": o.cv_sd,
            "cv_auc_oof": cv_auc, "test": test_metrics, "gdi": _gdi(cv_auc, test_metrics["auc"]["value"]),
            "features_kept": o.kept,
            "selection_frequency": dict(sorted(o.fold_kept.items(), key=lambda kv: -kv[1])[:20]),
            "operating_points": _operating(data, o, train, test, n_boot, seed),
            "chance_in_test_auc_ci": test_metrics["auc"]["ci95_low"] <= 0.5 <= test_metrics["auc"]["ci95_high"],
        })
    comparisons = []
    for i in range(len(reported)):
        for j in range(i + 1, len(reported)):
            a, b = reported[i], reported[j]
            assert a.test_proba is not None and b.test_proba is not None
            comparisons.append({"a": a.spec.label, "b": b.spec.label,
                                "delong_test": _delong_pair(yte, a.test_proba, b.test_proba),
                                "delong_cv_oof": _delong_pair(ytr, a.oof, b.oof)})
    set_comparison = None
    if recipe.compare:
        firsts = [_best([o for o in reported if o.spec.feature_set == s]) for s in recipe.compare]
        assert firsts[0].test_proba is not None and firsts[1].test_proba is not None
        set_comparison = {"a": recipe.compare[0], "b": recipe.compare[1],
                          "delong_test": _delong_pair(yte, firsts[1].test_proba, firsts[0].test_proba),
                          "delong_cv_oof": _delong_pair(ytr, firsts[1].oof, firsts[0].oof),
                          "direction": f"{recipe.compare[1]} minus {recipe.compare[0]}"}
    results: dict[str, Any] = {
        "task": data.name, "classes": list(data.classes), "n_lesions": int(data.y.size),
        "n_patients": data.n_patients,
        "class_counts": {c: int(np.sum(data.y == i)) for i, c in enumerate(data.classes)},
        "split": {"train_patients": int(np.unique(data.groups[train]).size),
                  "test_patients": int(np.unique(data.groups[test]).size),
                  "rule": "patient-grouped, stratified hold-out; CV folds patient-grouped inside the training part"},
        "n_inputs": len(data.names), "notes": data.notes, "n_bootstrap": n_boot, **info,
        "candidates": [{"pipeline": o.spec.describe(), "feature_set": o.spec.feature_set, "cv_mean": o.cv_mean,
                        "cv_sd": o.cv_sd}
                       for o in outcomes],
        "best": best.spec.label, "models": models, "comparisons": comparisons, "feature_set_comparison": set_comparison,
        "baseline": _baseline(data, best, test, n_boot, seed),
    }
    run = TaskRun(data, train, test, outcomes, reported, best, results)
    if nested:
        run.nested_oof, results["nested"] = _nested(recipe, data, specs, seed, n_boot)
    if with_shap:
        try:
            run.shap = _shap(best, data, train, test, seed)
            run.shap_units = shap_units(best.model.clf if best.model is not None else None)
            results["shap_units"] = run.shap_units
        except (ValueError, TypeError, ImportError) as exc:  # SHAP is descriptive; its failure is reported
            logger.warning("SHAP summary failed: %s", exc)
            results["shap_error"] = str(exc)
    results["shap_mean_abs"] = run.shap
    return run


def _nested(recipe: Recipe, data: TaskData, specs: list[ModelSpec], seed: int,
            n_boot: int) -> tuple[FloatArray, dict[str, Any]]:
    """Nested CV over all patients: each outer fold's candidate is chosen by CV inside its training part."""
    rows_all = np.arange(data.y.size, dtype=np.int64)
    oof = np.full((data.y.size, data.n_classes), np.nan)
    chosen = []
    for tr, te in grouped_splits(data.y, data.groups, recipe.cv_folds, seed + 1):
        cache: dict[Any, Any] = {}
        best = _best([cross_validate(s, data, rows_all[tr], recipe, seed, cache) for s in specs])
        model = _fit_rows(best.spec, data, rows_all[tr], seed)
        oof[te] = _predict_rows(model, data, rows_all[te])
        chosen.append(best.spec.label + " — " + best.spec.describe())
    metrics = _metrics(data.y, oof, data.groups, n_boot, seed)
    metrics["chosen_per_outer_fold"] = chosen
    metrics["chance_in_auc_ci"] = metrics["auc"]["ci95_low"] <= 0.5 <= metrics["auc"]["ci95_high"]
    return oof, metrics


@dataclass
class RecipeRun:
    recipe: Recipe
    tasks: list[TaskRun]
    skipped: dict[str, str]


def run_recipe(recipe: Recipe, folder: Path, *, nested: bool = False, seed: int = 0, n_boot: int = 1000,
               with_shap: bool = True) -> RecipeRun:
    """Every task of ``recipe`` on the dataset folder; a task the folder has no labels for is skipped and said."""
    from node.errors import ConfigError

    runs: list[TaskRun] = []
    skipped: dict[str, str] = {}
    for spec in recipe.tasks:
        try:
            data = load_task_data(recipe, spec, folder)
        except ConfigError as exc:
            if "file not found" in exc.message or "has no" in exc.message:
                raise
            skipped[spec.name] = exc.message
            logger.warning("task %s skipped: %s", spec.name, exc.message)
            continue
        runs.append(run_task(recipe, data, nested=nested, seed=seed, n_boot=n_boot, with_shap=with_shap))
    if not runs:
        raise ConfigError(f"recipe {recipe.name}: no task could run on {folder}: "
                          + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return RecipeRun(recipe, runs, skipped)
