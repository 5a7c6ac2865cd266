"""Acceptance of issue 3 on synthetic tables: beats the non-conversion baseline on a held-out site, the planted
features lead the SHAP ranking, and pure noise stays at chance (selection happens inside the folds)."""

from __future__ import annotations

import numpy as np
import pytest

from node.evaluation import stats
from node.evaluation.evaluate import compute_metrics, evaluate
from node.model.bundle import load_bundle
from node.model.tasks import PRIMARY_PREFIX, Task
from node.training.cv import nested_cv
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import grid
from node.training.synthetic import PLANTED_FEATURES, write_tables
from node.training.train import TrainOptions, train


@pytest.fixture(scope="module")
def site_split(tmp_path_factory):
    tables = write_tables(tmp_path_factory.mktemp("sites"), n_patients=240, n_noise=30, seed=21, n_sites=2, signal=3.0)
    data = load_dataset(tables.features_csv, tables.labels_csv, Task.SUBTYPE)
    return data.subset(data.sites == "site-A"), data.subset(data.sites == "site-B")


def test_beats_non_conversion_baseline_on_held_out_site(site_split, tmp_path):
    train_data, test_data = site_split
    assert set(train_data.groups).isdisjoint(test_data.groups)
    result = train(train_data, TrainOptions(task=Task.SUBTYPE, grid="tiny", progress=False, seed=0))
    bundle = load_bundle(save_bundle(result, tmp_path / "bundle"))
    metrics = evaluate(bundle, test_data, tmp_path / "report", n_boot=300, seed=0)
    base = metrics["baseline"]
    assert metrics["accuracy"]["value"] > base["accuracy"]["value"] + 0.05
    assert base["accuracy_gee"]["p_value"] < 0.05
    assert base["accuracy_delta_bootstrap"]["ci95_low"] > 0
    conv = base["conversion"]
    assert conv["model_correct_on_converted"] > conv["n_converted"] / 2
    # the planted features lead the SHAP ranking among the radiomic inputs
    radiomic = [r["feature"] for r in metrics["shap"]["ranking"] if not r["feature"].startswith(PRIMARY_PREFIX)]
    assert set(radiomic[:3]) == set(PLANTED_FEATURES)
    # report files
    for name in ("metrics.json", "model_card.md", "model_card.html", "model_card.json", "roc.png",
                 "confusion_matrix.png", "calibration.png", "decision_curve.png", "shap_summary.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    card = (tmp_path / "report" / "model_card.md").read_text()
    assert "RESEARCH USE ONLY, NOT FOR DIAGNOSIS" in card and "GEE p" in card
    assert "<table>" in (tmp_path / "report" / "model_card.html").read_text()


def test_binary_task_reports_delong_calibration_dca_and_gdi(tmp_path):
    tables = write_tables(tmp_path / "t", n_patients=140, n_noise=20, seed=5)
    data = load_dataset(tables.features_csv, tables.labels_csv, Task.HER2)
    train_data, test_data = data.subset(data.sites == "site-A"), data.subset(data.sites == "site-B")
    result = train(train_data, TrainOptions(task=Task.HER2, grid="tiny", progress=False))
    bundle = load_bundle(save_bundle(result, tmp_path / "b"))
    m = compute_metrics(bundle, test_data, n_boot=100)
    auc = m["auc_ovr"]["positive"]
    assert 0.5 < auc["auc"] <= 1
    assert auc["ci95_low"] < auc["auc"] <= auc["ci95_high"]
    assert "auc_delong_model_vs_baseline" in m["baseline"]
    assert 0 <= m["brier"] <= 1
    assert m["gdi"]["zone"] in ("safe", "warning", "high risk")
    assert m["gdi"]["gdi"] == pytest.approx((m["gdi"]["auc_train"] - m["auc_macro"]) / m["gdi"]["auc_train"])
    curve = m["decision_curve"]["curves"]["positive"]
    assert len(curve["model"]) == len(m["decision_curve"]["thresholds"])
    # at a low threshold a useful model's net benefit is near treat-all; never far below it
    assert curve["model"][0] >= curve["treat_all"][0] - 0.05


def test_pure_noise_stays_at_chance_with_in_fold_selection(tmp_path):
    tables = write_tables(tmp_path, n_patients=100, n_noise=60, seed=8, signal=0.0)
    data = load_dataset(tables.features_csv, tables.labels_csv, Task.HER2)
    selectors, classifiers = grid("tiny")
    nested = nested_cv(data.x, data.y, data.groups, selectors, classifiers, n_classes=2, seed=0,
                       n_splits=4, progress=False)
    auc = stats.delong_ci(data.y, nested.oof_proba[:, 1])
    assert auc.low < 0.5 < auc.high
    pred = nested.oof_proba.argmax(axis=1).astype(np.int64)
    resamples = stats.patient_resamples(data.groups, 300, seed=0)
    acc = stats.bootstrap_ci(stats.accuracy_of(data.y, pred), resamples, data.y.size)
    majority = max(np.mean(data.y), 1 - np.mean(data.y))
    assert acc.low < majority and acc.low < 0.5 + 0.02
