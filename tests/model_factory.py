"""Tiny, real model bundles for tests that need a model set fitting a real study's 200 features."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from node.imaging.features import FEATURE_NAMES
from node.model.tasks import Task
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import StepSpec
from node.training.synthetic import PLANTED_FEATURES, write_tables
from node.training.train import TrainOptions, train


def train_tiny_bundles(root: Path, tasks: Iterable[Task], *, k: int, learning_rate: float) -> Path:
    """Train one tiny xgboost bundle per task on a synthetic table whose columns are the pipeline's real
    FEATURE_NAMES (planted signal kept); returns the models folder ``root/models``."""
    tables = write_tables(root / "tables", n_patients=60, n_noise=len(FEATURE_NAMES) - len(PLANTED_FEATURES), seed=3)
    frame = pd.read_csv(tables.features_csv)
    others = iter(n for n in FEATURE_NAMES if n not in PLANTED_FEATURES)
    frame = frame.rename(columns={n: next(others) for n in tables.feature_names if n not in PLANTED_FEATURES})
    frame.to_csv(tables.features_csv, index=False)
    select = StepSpec("kbest_f", (("k", k),))
    xgb = StepSpec(
        "xgboost", (("gamma", 0.0), ("learning_rate", learning_rate), ("max_depth", 2), ("n_estimators", 20))
    )
    models = root / "models"
    for task in tasks:
        data = load_dataset(tables.features_csv, tables.labels_csv, task)
        options = TrainOptions(task=task, seed=0, progress=False, n_splits=3, candidates=((select,), (xgb,)))
        save_bundle(train(data, options), models / task.value)
    return models
