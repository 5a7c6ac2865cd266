"""The search space of docs/method.md §1.5: RobustScaler → feature reduction → tree-ensemble classifier.

Reduction: ``SelectKBest(f_classif)``, ``SelectKBest(mutual_info_classif)``, or LASSO: an L1 logistic
regression whose penalty is chosen by patient-grouped inner cross-validation
(:class:`node.training.lasso.GroupedLassoSelector`; the penalty decides how many features stay, a safety cap of
100 does not bind in practice). The LASSO step needs the patient ids: :func:`selector_fit_params`.
Classifiers: AdaBoost (SAMME, depth-limited trees), XGBoost (``multi:softprob`` / ``binary:logistic``),
LightGBM and Random Forest; the tuned hyperparameters are learning rate, ``n_estimators``, max depth and gamma
(XGBoost's minimum split loss).

Grids: ``tiny`` (tests), ``quick`` (a few minutes) and ``full`` (≤ 10 min on 200 patients, 2 cores; see
bench/bench_train.py). Every estimator is single-threaded and seeded, so a search is reproducible.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import lightgbm as lgb
import numpy.typing as npt
import xgboost as xgb
from sklearn.base import BaseEstimator
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.feature_selection import SelectKBest, f_classif, mutual_info_classif
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import RobustScaler
from sklearn.tree import DecisionTreeClassifier

from node.training.lasso import GroupedLassoSelector

logger = logging.getLogger(__name__)

GridName = Literal["tiny", "quick", "full"]
SELECTOR_KINDS = ("kbest_f", "kbest_mi", "l1")
LASSO_SAFETY_CAP = 100
CLASSIFIER_KINDS = ("adaboost", "xgboost", "lightgbm", "random_forest")


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step as a kind plus JSON-able parameters (recorded in manifests and cards)."""

    kind: str
    params: tuple[tuple[str, float | int | str | None], ...] = ()

    @property
    def param_dict(self) -> dict[str, float | int | str | None]:
        return dict(self.params)

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.kind}({inner})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.param_dict}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepSpec:
        return cls(str(data["kind"]), tuple(sorted(dict(data["params"]).items())))


def _spec(kind: str, **params: float | int | str | None) -> StepSpec:
    return StepSpec(kind, tuple(sorted(params.items())))


def make_selector(spec: StepSpec, n_features: int, n_classes: int, seed: int) -> BaseEstimator:
    """The scikit-learn feature-reduction step for ``spec`` (k is capped at the number of features)."""
    p = spec.param_dict
    if spec.kind == "kbest_f":
        return SelectKBest(f_classif, k=min(int(p["k"] or 1), n_features))
    if spec.kind == "kbest_mi":
        score = partial(mutual_info_classif, random_state=seed, n_neighbors=3)
        return SelectKBest(score, k=min(int(p["k"] or 1), n_features))
    if spec.kind == "l1":  # an old spec's "C" is ignored: the penalty is chosen by grouped inner CV
        return GroupedLassoSelector(max_features=int(p.get("max_features") or LASSO_SAFETY_CAP),
                                    rule=str(p.get("rule") or "1se"), seed=seed)
    raise ValueError(f"unknown selector kind {spec.kind!r}")


def selector_fit_params(spec: StepSpec, groups: npt.ArrayLike | None) -> dict[str, Any]:
    """Extra ``fit`` arguments of the selector: the patient ids for the LASSO step's grouped inner CV."""
    return {"groups": groups} if spec.kind == "l1" and groups is not None else {}


def make_classifier(spec: StepSpec, n_classes: int, seed: int) -> BaseEstimator:
    """The classifier for ``spec``, single-threaded and seeded."""
    p = spec.param_dict
    if spec.kind == "xgboost":
        return xgb.XGBClassifier(
            n_estimators=int(p["n_estimators"] or 100),
            learning_rate=float(p["learning_rate"] or 0.1),
            max_depth=int(p["max_depth"] or 3),
            gamma=float(p["gamma"] or 0.0),
            subsample=1.0,
            objective="multi:softprob" if n_classes > 2 else "binary:logistic",
            tree_method="hist",
            n_jobs=1,
            random_state=seed,
            verbosity=0,
        )
    if spec.kind == "lightgbm":
        return lgb.LGBMClassifier(
            n_estimators=int(p["n_estimators"] or 100),
            learning_rate=float(p["learning_rate"] or 0.1),
            max_depth=int(p["max_depth"] or -1),
            num_leaves=15,
            min_child_samples=5,
            min_split_gain=float(p["gamma"] or 0.0),
            n_jobs=1,
            random_state=seed,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
    if spec.kind == "random_forest":
        depth = p["max_depth"]
        return RandomForestClassifier(
            n_estimators=int(p["n_estimators"] or 200),
            max_depth=None if depth is None else int(depth),
            n_jobs=1,
            random_state=seed,
        )
    if spec.kind == "adaboost":
        return AdaBoostClassifier(
            estimator=DecisionTreeClassifier(max_depth=int(p["max_depth"] or 1), random_state=seed),
            n_estimators=int(p["n_estimators"] or 50),
            learning_rate=float(p["learning_rate"] or 1.0),
            random_state=seed,
        )
    raise ValueError(f"unknown classifier kind {spec.kind!r}")


def make_pipeline(
    selector: StepSpec, classifier: StepSpec, n_features: int, n_classes: int, seed: int
) -> Pipeline:
    """The full, unfitted pipeline: every learned step is fitted together, inside whatever fold fits it."""
    return Pipeline(
        [
            ("scale", RobustScaler()),
            ("select", make_selector(selector, n_features, n_classes, seed)),
            ("clf", make_classifier(classifier, n_classes, seed)),
        ]
    )


def _product(kind: str, **axes: list[Any]) -> list[StepSpec]:
    names = sorted(axes)
    combos = itertools.product(*(axes[n] for n in names))
    return [_spec(kind, **dict(zip(names, combo, strict=True))) for combo in combos]


def grid(name: GridName) -> tuple[list[StepSpec], list[StepSpec]]:
    """(selectors, classifiers) of a named grid; every selector is crossed with every classifier."""
    if name == "tiny":
        selectors = [_spec("kbest_f", k=8), _spec("l1", max_features=LASSO_SAFETY_CAP)]
        classifiers = [
            _spec("xgboost", n_estimators=60, learning_rate=0.2, max_depth=2, gamma=0.0),
            _spec("random_forest", n_estimators=60, max_depth=4),
        ]
        return selectors, classifiers
    if name == "quick":
        selectors = [
            _spec("kbest_f", k=10),
            _spec("kbest_mi", k=10),
            _spec("l1", max_features=LASSO_SAFETY_CAP),
        ]
        classifiers = [
            *_product("xgboost", n_estimators=[100], learning_rate=[0.1], max_depth=[2, 4], gamma=[0.0]),
            _spec("lightgbm", n_estimators=100, learning_rate=0.1, max_depth=3, gamma=0.0),
            _spec("random_forest", n_estimators=200, max_depth=None),
            _spec("adaboost", n_estimators=100, learning_rate=0.5, max_depth=1),
        ]
        return selectors, classifiers
    if name == "full":
        selectors = [
            _spec("kbest_f", k=10),
            _spec("kbest_f", k=30),
            _spec("kbest_mi", k=10),
            _spec("kbest_mi", k=30),
            _spec("l1", max_features=LASSO_SAFETY_CAP),
        ]
        classifiers = [
            *_product(
                "xgboost", n_estimators=[100, 300], learning_rate=[0.05, 0.2], max_depth=[2, 4], gamma=[0.0, 1.0]
            ),
            *_product("lightgbm", n_estimators=[100, 300], learning_rate=[0.05, 0.2], max_depth=[3], gamma=[0.0]),
            *_product("random_forest", n_estimators=[300], max_depth=[3, None]),
            *_product("adaboost", n_estimators=[100], learning_rate=[0.5, 1.0], max_depth=[1, 2]),
        ]
        return selectors, classifiers
    raise ValueError(f"unknown grid {name!r}")


def describe_grid(name: GridName) -> dict[str, Any]:
    """The search space as JSON (for manifests and model cards)."""
    selectors, classifiers = grid(name)
    return {
        "name": name,
        "selectors": [s.to_json() for s in selectors],
        "classifiers": [c.to_json() for c in classifiers],
        "n_candidates": len(selectors) * len(classifiers),
    }


def spec_key(selector: StepSpec, classifier: StepSpec) -> str:
    """A stable text key of a candidate (for logs and result tables)."""
    return json.dumps([selector.to_json(), classifier.to_json()], sort_keys=True)
