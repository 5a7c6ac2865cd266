"""Random Forest / AdaBoost JSON export: identical probabilities to scikit-learn, exact SHAP additivity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shap
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from node.model.trees import TreeEnsemble
from node.training.export import from_sklearn


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("kind", ["random_forest", "adaboost"])
def test_export_matches_sklearn_and_shap_is_additive(kind, n_classes):
    rng = np.random.default_rng(n_classes)
    x = rng.normal(size=(160, 6))
    y = (x[:, 0] > 0).astype(int) + (2 * (x[:, 1] > 0) if n_classes == 4 else 0)
    weights = rng.uniform(0.5, 2.0, y.size)
    model = (
        RandomForestClassifier(n_estimators=30, max_depth=5, random_state=0)
        if kind == "random_forest"
        else AdaBoostClassifier(DecisionTreeClassifier(max_depth=2), n_estimators=30, random_state=0)
    )
    model.fit(x, y, sample_weight=weights)
    ensemble = TreeEnsemble.from_json(json.loads(json.dumps(from_sklearn(model).to_json())))
    test = rng.normal(size=(40, 6))
    np.testing.assert_allclose(ensemble.predict_proba(test), model.predict_proba(test), atol=1e-12)
    explainer = shap.TreeExplainer(ensemble.shap_model())
    values = np.asarray(explainer.shap_values(test))
    np.testing.assert_allclose(values.sum(axis=1) + explainer.expected_value, ensemble.raw(test), atol=1e-9)


def test_corrupt_tree_json_is_refused():
    model = RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0).fit(
        np.arange(20.0).reshape(10, 2), [0, 1] * 5
    )
    data = from_sklearn(model).to_json()
    data["trees"][0]["children_left"][0] = 999
    with pytest.raises(ValueError):
        TreeEnsemble.from_json(data)
    with pytest.raises(ValueError):
        TreeEnsemble.from_json({"format": "other"})
