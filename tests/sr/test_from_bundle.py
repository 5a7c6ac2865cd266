"""End to end with real models: tiny bundles trained by node.learn on a synthetic table, their Predictions turned
into the SR (ModelInfo from the bundle manifest), written and validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pandas as pd
import pytest
from pydicom.sr.codedict import codes

from node.model.bundle import MANIFEST, Bundle, load_bundle, sha256_file
from node.model.tasks import Task
from node.sr.content import (
    AlgorithmInfo,
    ModelInfo,
    PonsSummary,
    ReportContent,
    SubtypeModel,
    lesion_result_from_predictions,
)
from node.sr.report import build_report, write_instance
from node.sr.source import SourceStudy
from node.sr.validate import validate_sr
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import StepSpec
from node.training.synthetic import write_tables
from node.training.train import TrainOptions, train

SELECT = StepSpec("kbest_f", (("k", 6),))
XGB = StepSpec("xgboost", (("gamma", 0.0), ("learning_rate", 0.2), ("max_depth", 2), ("n_estimators", 20)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Bundle], pd.DataFrame]:
    root = tmp_path_factory.mktemp("tiny")
    tables = write_tables(root, n_patients=60, n_noise=8, seed=3)
    bundles = {}
    for task in (Task.SUBTYPE, Task.ER):
        data = load_dataset(tables.features_csv, tables.labels_csv, task)
        options = TrainOptions(task=task, seed=0, progress=False, n_splits=3, candidates=((SELECT,), (XGB,)))
        bundles[task.value] = load_bundle(save_bundle(train(data, options), root / task.value))
    return bundles, pd.read_csv(tables.features_csv)


def test_sr_from_bundle_predictions(tiny, source: SourceStudy, tmp_path: Path):
    bundles, table = tiny
    lesions = []
    for n in (1, 2):
        row = table.iloc[n]
        features = {c: float(row[c]) for c in bundles["subtype"].radiomic_features}
        subtype = bundles["subtype"].predict(features, "HR+/HER2-")
        er = bundles["er"].predict(features)
        lesions.append(lesion_result_from_predictions(n, subtype, features, 0.8, er=er, top_k=5,
                                                      primary_subtype="HR+/HER2-"))
    models = tuple(ModelInfo.from_bundle(b) for b in bundles.values())
    assert models[0].sha256 == sha256_file(bundles["subtype"].path / MANIFEST)
    content = ReportContent(source=source, lesions=tuple(lesions), algorithm=AlgorithmInfo(models=models),
                            subtype_model=SubtypeModel.WITH_PRIMARY, pons=PonsSummary("seg"),
                            primary_subtype="HR+/HER2-")
    path = write_instance(build_report(content), tmp_path)
    assert validate_sr(path, checks=("roundtrip", "dsrdump", "dciodvfy", "tid1500reader")) == []
    report: Any = hd.sr.srread(path).content
    groups = report.get_volumetric_roi_measurement_groups(
        reference_type=codes.DCM.ReferencedSegment)
    assert len(groups) == 6
    shap = groups[1].get_measurements()
    assert len(shap) == 5 + 1  # top 5 + base value
