"""Synthetic feature/label tables and small trained bundles shared by the learn tests (deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.model.bundle import Bundle, load_bundle
from node.model.tasks import Task
from node.training.dataset import Dataset, load_dataset
from node.training.export import save_bundle
from node.training.grid import StepSpec
from node.training.synthetic import SyntheticTables, write_tables
from node.training.train import TrainOptions, TrainResult, train

L1 = StepSpec("l1", (("max_features", 100),))
KBEST = StepSpec("kbest_f", (("k", 8),))
CLASSIFIERS = {
    "xgboost": StepSpec("xgboost", (("gamma", 0.0), ("learning_rate", 0.2), ("max_depth", 2), ("n_estimators", 40))),
    "lightgbm": StepSpec("lightgbm", (("gamma", 0.0), ("learning_rate", 0.1), ("max_depth", 3), ("n_estimators", 40))),
    "random_forest": StepSpec("random_forest", (("max_depth", 4), ("n_estimators", 40))),
    "adaboost": StepSpec("adaboost", (("learning_rate", 0.5), ("max_depth", 1), ("n_estimators", 40))),
}


@pytest.fixture(scope="session")
def tables(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTables:
    """120 patients, 2 sites, 3 planted + 30 noise features."""
    return write_tables(tmp_path_factory.mktemp("tables"), n_patients=120, n_noise=30, seed=11)


@pytest.fixture(scope="session")
def subtype_data(tables: SyntheticTables) -> Dataset:
    return load_dataset(tables.features_csv, tables.labels_csv, Task.SUBTYPE)


def fit_one(data: Dataset, classifier: str, selector: StepSpec = L1, seed: int = 0) -> TrainResult:
    options = TrainOptions(task=data.task, seed=seed, progress=False, n_splits=3,
                           candidates=((selector,), (CLASSIFIERS[classifier],)))
    return train(data, options)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, tables: SyntheticTables) -> dict[str, tuple[TrainResult, Path]]:
    """One trained bundle per (task, classifier family) that the tests need."""
    root = tmp_path_factory.mktemp("bundles")
    out: dict[str, tuple[TrainResult, Path]] = {}
    for task, kinds in ((Task.SUBTYPE, CLASSIFIERS), (Task.HER2, ("xgboost", "lightgbm"))):
        data = load_dataset(tables.features_csv, tables.labels_csv, task)
        for kind in kinds:
            result = fit_one(data, kind)
            path = save_bundle(result, root / f"{task.value}-{kind}")
            out[f"{task.value}-{kind}"] = (result, path)
    return out


@pytest.fixture
def loaded(bundles: dict[str, tuple[TrainResult, Path]]) -> dict[str, Bundle]:
    return {name: load_bundle(path) for name, (_, path) in bundles.items()}
