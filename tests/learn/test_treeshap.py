"""The node's own TreeSHAP (node.model.treeshap) gives the values shap.TreeExplainer gives, for every model kind.

The node does not import ``shap`` at run time (the container image leaves it out); these tests, in the development
environment where ``shap`` is installed, compare against it: trained bundles of every kind (XGBoost, LightGBM, Random
Forest, AdaBoost; multi-class subtype and binary HER2), small models fitted here with odd shapes (deep trees, repeated
splits on one feature, two and four classes), and every bundle shipped in models/demo.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import shap
import xgboost as xgb
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from node.model.bundle import Bundle, load_bundle
from node.model.trees import JsonTree, TreeEnsemble, with_internal_means
from node.model.treeshap import booster_shap, ensemble_shap
from node.training.export import from_sklearn
from tests.learn.treeshap_oracle import recursive_shap

DEMO = Path(__file__).parents[2] / "models" / "demo"
TOL = 1e-6


def shap_reference(model: xgb.Booster | lgb.Booster | TreeEnsemble, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the node computed before: shap.TreeExplainer, values (n, inputs[, classes]) and expected values."""
    explainer = shap.TreeExplainer(model.shap_model() if isinstance(model, TreeEnsemble) else model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        raw = explainer.shap_values(z)
    values = np.stack(raw, axis=-1) if isinstance(raw, list) else np.asarray(raw, dtype=np.float64)
    return values, np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))


def ours(model: xgb.Booster | lgb.Booster | TreeEnsemble, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ensemble_shap(model, z) if isinstance(model, TreeEnsemble) else booster_shap(model, z)


def assert_same(model: xgb.Booster | lgb.Booster | TreeEnsemble, z: np.ndarray) -> None:
    expected, expected_base = shap_reference(model, z)
    got, base = ours(model, z)
    assert got.shape == expected.shape and base.shape == expected_base.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(base, expected_base, rtol=0, atol=TOL * scale)
    assert np.abs(got).max() > 0  # a model that ignores its inputs would prove nothing


def data(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 7))
    y = (x[:, 0] + 0.5 * x[:, 2] ** 2 > 0.3).astype(int)
    if n_classes == 4:
        y = y + 2 * (x[:, 1] - 0.3 * x[:, 3] > 0)
    return x, y, rng.normal(size=(25, 7))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_xgboost(n_classes):
    x, y, test = data(n_classes)
    params: dict[str, Any] = {"max_depth": 5, "eta": 0.3}
    if n_classes == 2:
        params["base_score"] = 0.3  # a base score other than 0.5: it must land in the base value, not the inputs
    params |= ({"objective": "binary:logistic"} if n_classes == 2
               else {"objective": "multi:softprob", "num_class": 4})
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=25)
    assert_same(booster, test)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_lightgbm(n_classes):
    x, y, test = data(n_classes)
    params = {"objective": "binary" if n_classes == 2 else "multiclass", "num_leaves": 15, "min_data_in_leaf": 5,
              "verbose": -1, **({"num_class": 4} if n_classes == 4 else {})}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=25)
    assert_same(booster, test)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("kind", ["random_forest", "adaboost"])
def test_sklearn_ensembles(kind, n_classes):
    x, y, test = data(n_classes, seed=n_classes)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, y.size)
    model = (
        RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0)
        if kind == "random_forest"
        else AdaBoostClassifier(DecisionTreeClassifier(max_depth=3), n_estimators=20, random_state=0)
    )
    model.fit(x, y, sample_weight=weights)
    ensemble = TreeEnsemble.from_json(json.loads(json.dumps(from_sklearn(model).to_json())))
    assert_same(ensemble, test)
    # additivity: base + contributions = the ensemble's raw output
    values, base = ensemble_shap(ensemble, test)
    np.testing.assert_allclose(values.sum(axis=1) + base, ensemble.raw(test), atol=1e-9)


def test_a_feature_split_twice_on_one_path():
    """Repeated splits on one feature exercise the path's unwind step."""
    x = np.linspace(-3, 3, 300)[:, None] * np.ones((1, 3))
    x[:, 1] = np.sin(np.arange(300))
    y = ((x[:, 0] > -1) & (x[:, 0] < 1)).astype(int) ^ (x[:, 1] > 0.5).astype(int)
    model = RandomForestClassifier(n_estimators=5, max_depth=10, random_state=0).fit(x, y)
    ensemble = from_sklearn(model)
    assert_same(ensemble, x[::23])


def model_rows(bundle: Bundle, n: int = 8) -> np.ndarray:
    """Full input rows around the training centre, spread over several scales."""
    rng = np.random.default_rng(3)
    rows = bundle.center + bundle.scale * rng.normal(size=(n, bundle.center.size)) * 1.5
    return np.asarray(rows, dtype=np.float64)


def test_trained_bundles_of_every_kind(loaded):
    kinds = set()
    for name, bundle in loaded.items():
        z = bundle.model_inputs(model_rows(bundle))
        assert_same(bundle.model, z)
        kinds.add(bundle.kind)
        values, base = bundle.shap_values(model_rows(bundle))
        assert values.shape[2] == base.size == len(bundle.classes), name
    assert kinds == {"xgboost", "lightgbm", "random_forest", "adaboost"}


def test_shipped_demo_models():
    paths = sorted(p.parent for p in DEMO.glob("*/manifest.json"))
    assert paths
    for path in paths:
        bundle = load_bundle(path)
        assert_same(bundle.model, bundle.model_inputs(model_rows(bundle)))


# -- the numpy path form against the recursion it replaced (tests/learn/treeshap_oracle.py), to 1e-12 -----------


def random_tree(rng: np.random.Generator, n_features: int, n_classes: int, max_depth: int,
                consistent: bool) -> JsonTree:
    """A random binary tree in pre-order: few features (so paths split on one feature again and again), thresholds
    on a coarse grid (so rows land on them). Covers shrink from the root: split between the two children
    (``consistent``) or each child a random part of its parent (Algorithm 2 only uses the child / parent ratios)."""
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    weight: list[float] = []

    def grow(depth: int, cover: float) -> int:
        node = len(left)
        left.append(-1)
        right.append(-1)
        feature.append(-2)
        threshold.append(-2.0)
        weight.append(cover)
        if depth < max_depth and (depth < 2 or rng.random() < 0.75):
            feature[node] = int(rng.integers(n_features))
            threshold[node] = float(rng.integers(-4, 5)) / 2
            share = float(rng.uniform(0.02, 0.98))
            shares = (share, 1.0 - share) if consistent else tuple(rng.uniform(0.02, 1.0, 2))
            left[node] = grow(depth + 1, cover * shares[0])
            right[node] = grow(depth + 1, cover * shares[1])
        return node

    grow(0, 100.0)
    left_a, right_a = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    weight_a = np.asarray(weight)
    leaf_value = rng.normal(size=(left_a.size, n_classes))
    return JsonTree(left_a, right_a, np.asarray(feature, dtype=np.int64), np.asarray(threshold),
                    with_internal_means(left_a, right_a, leaf_value, weight_a), weight_a)  # fmt: skip


def random_rows(rng: np.random.Generator, n: int, n_features: int) -> np.ndarray:
    """Rows on and between the thresholds' grid, with a few NaN and +-inf (NaN goes right, -inf left)."""
    x = np.where(rng.random((n, n_features)) < 0.5, rng.integers(-5, 6, (n, n_features)) / 2,
                 rng.normal(scale=1.5, size=(n, n_features)))  # fmt: skip
    odd = rng.random((n, n_features))
    x[odd < 0.03] = np.nan
    x[(odd >= 0.03) & (odd < 0.05)] = np.inf
    x[(odd >= 0.05) & (odd < 0.07)] = -np.inf
    return x


@pytest.mark.parametrize("seed", range(6))
def test_paths_equal_the_recursion_on_random_trees(seed):
    rng = np.random.default_rng(seed)
    n_features, n_classes = int(rng.integers(1, 12)), int(rng.integers(1, 5))
    trees = tuple(random_tree(rng, n_features, n_classes, int(rng.integers(1, 13)), consistent=seed % 2 == 0)
                  for _ in range(12))  # fmt: skip
    ensemble = TreeEnsemble("random_forest", n_classes, n_features, trees)
    x = random_rows(rng, 40, n_features)
    values, base = ensemble_shap(ensemble, x)
    expected, expected_base = recursive_shap(ensemble, x)
    assert values.shape == expected.shape == (40, n_features, n_classes)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12 * max(1.0, float(np.abs(expected).max())))
    np.testing.assert_allclose(base, expected_base, rtol=0, atol=1e-12)
    assert np.abs(values).max() > 0
    if seed % 2 == 0:  # consistent covers: additivity, the raw output
        finite = np.isfinite(x).all(axis=1)
        np.testing.assert_allclose(values.sum(axis=1)[finite] + base, ensemble.raw(x[finite]), atol=1e-9)


def test_paths_equal_the_recursion_on_the_shipped_ensembles():
    """The demo's deep Random Forests (paths of up to 16 distinct features) and AdaBoost stumps, a few rows."""
    paths = sorted(p.parent for p in DEMO.glob("*/trees.json"))
    assert paths
    for path in paths:
        bundle = load_bundle(path)
        assert isinstance(bundle.model, TreeEnsemble)
        z = bundle.model_inputs(model_rows(bundle, n=3))
        values, base = ensemble_shap(bundle.model, z)
        expected, expected_base = recursive_shap(bundle.model, z)
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(base, expected_base, rtol=0, atol=1e-12)


def test_many_rows_are_explained_in_chunks(monkeypatch):
    """Rows beyond one chunk give the values they give one by one."""
    import node.model.treeshap as treeshap

    rng = np.random.default_rng(7)
    trees = tuple(random_tree(rng, 4, 3, 8, consistent=True) for _ in range(5))
    ensemble = TreeEnsemble("random_forest", 3, 4, trees)
    x = random_rows(rng, 9, 4)
    alone = np.concatenate([ensemble_shap(ensemble, x[i:i + 1])[0] for i in range(9)])
    monkeypatch.setattr(treeshap, "_CHUNK_ELEMENTS", 1)  # one row per chunk
    np.testing.assert_allclose(ensemble_shap(ensemble, x)[0], alone, rtol=0, atol=1e-15)
    monkeypatch.setattr(treeshap, "_CHUNK_ELEMENTS", 10**9)  # all rows in one chunk
    np.testing.assert_allclose(ensemble_shap(ensemble, x)[0], alone, rtol=0, atol=1e-15)


def test_the_paths_are_built_once_per_ensemble():
    """The warm worker's loaded ensemble keeps its paths: later explanations do not rebuild them."""
    rng = np.random.default_rng(3)
    ensemble = TreeEnsemble("random_forest", 2, 3, (random_tree(rng, 3, 2, 6, consistent=True),))
    first = ensemble.leaf_paths
    ensemble_shap(ensemble, random_rows(rng, 2, 3))
    assert ensemble.leaf_paths is first
