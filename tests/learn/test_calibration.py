"""Calibration: fit and apply, the confidence rule, bundles with and without a calibrator, the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from node.evaluation.evaluate import evaluate
from node.model.bundle import MANIFEST, BundleError, load_bundle
from node.model.calibration import CALIBRATION, Calibrator, calibration_in_the_large, expected_calibration_error
from node.model.provenance import Provenance
from node.model.tasks import PRIMARY_PREFIX
from node.training.calibrate import choose_confidence, fit_calibrator
from node.training.dataset import load_dataset


def _imbalanced(seed: int = 0, n: int = 2000, prevalence: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Binary outcomes at ``prevalence`` and the probabilities a balanced-weight model gives them: the true
    risk's logit shifted by log((1-prevalence)/prevalence), as inverse-frequency weights do."""
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n)
    true_logit = np.log(prevalence / (1 - prevalence)) + 1.5 * score
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.int64)
    shifted = true_logit + np.log((1 - prevalence) / prevalence)
    p1 = 1 / (1 + np.exp(-shifted))
    return y, np.column_stack([1 - p1, p1])


def _folds(n: int, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(n)
    return [(idx[idx % k != f], idx[idx % k == f]) for f in range(k)]


def test_calibrator_moves_probabilities_to_the_training_prevalence():
    y, raw = _imbalanced()
    cal = fit_calibrator(y, raw, _folds(y.size), ("negative", "positive"))
    calibrated = cal.apply(raw)
    observed = y.mean()
    assert raw[:, 1].mean() > observed + 0.15  # balanced weights inflate the minority class
    assert calibrated[:, 1].mean() == pytest.approx(observed, abs=0.02)
    assert cal.prevalence["positive"] == pytest.approx(observed)
    before = cal.details["before"]["per_class"]["positive"]
    after = cal.details["after"]["per_class"]["positive"]  # cross-fitted: not in-sample
    assert before["intercept"] < -1.0
    assert abs(after["intercept"]) < 0.15
    assert after["slope"] == pytest.approx(1.0, abs=0.15)
    assert cal.details["after"]["ece"] < cal.details["before"]["ece"]
    # ranking is untouched: the calibrator is monotone in the positive-class probability for two classes
    order = np.argsort(raw[:, 1])
    assert np.all(np.diff(calibrated[order, 1]) >= -1e-12)


def test_calibrator_json_round_trip_and_checks():
    y, raw = _imbalanced(seed=1, n=500)
    cal = fit_calibrator(y, raw, _folds(y.size), ("negative", "positive"))
    again = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    np.testing.assert_allclose(again.apply(raw), cal.apply(raw))
    assert again.confidence == cal.confidence
    with pytest.raises(ValueError):
        Calibrator(("a", "b"), 0.0, (0.0, 0.0))
    with pytest.raises(ValueError):
        cal.apply(np.ones((2, 3)) / 3)


def test_confidence_rule_is_the_smallest_threshold_reaching_the_target():
    # top probability 0.55..0.95; predictions right only when the top probability is >= 0.7
    top = np.repeat(np.linspace(0.55, 0.95, 9), 20)
    proba = np.column_stack([top, 1 - top])
    y = np.where(top >= 0.7, 0, 1).astype(np.int64)
    rule = choose_confidence(y, proba, target=0.8)  # window [0.65, 0.75): half right
    assert rule.threshold == pytest.approx(0.70)
    assert rule.cv_accuracy_at_or_above == pytest.approx(1.0)
    assert rule.cv_accuracy_below == pytest.approx(0.0)
    assert rule.is_low(0.69) and not rule.is_low(0.70)
    assert "80%" in rule.rule
    # nothing reaches the target: every prediction is low confidence
    assert choose_confidence(1 - y, proba, target=0.8).threshold == 1.0
    # many very confident, right predictions do not hide a band of coin flips just above 1/K
    top = np.r_[np.full(200, 0.95), np.full(20, 0.6)]
    y = np.r_[np.zeros(200), np.arange(20) % 2].astype(np.int64)
    rule = choose_confidence(y, np.column_stack([top, 1 - top]), target=0.8)
    assert rule.threshold == pytest.approx(0.65) and rule.is_low(0.6)


def test_metric_helpers():
    y, raw = _imbalanced(seed=2)
    intercept, slope = calibration_in_the_large(y, raw[:, 1])
    assert intercept < -1.0 and slope == pytest.approx(1.5 / 1.5, abs=0.2)
    assert expected_calibration_error(y, raw) > 0.05
    assert np.isnan(calibration_in_the_large(np.zeros(5, dtype=np.int64), np.full(5, 0.3))[0])


def test_bundle_with_calibrator_serves_calibrated_probabilities(bundles, loaded, subtype_data):
    _, path = bundles["subtype-xgboost"]
    manifest = json.loads((path / MANIFEST).read_text())
    assert CALIBRATION in manifest["artefacts"]
    assert manifest["calibration"]["prevalence"].startswith("training set: ")
    bundle = loaded["subtype-xgboost"]
    assert bundle.calibrator is not None and bundle.calibrator.confidence is not None
    assert sum(bundle.calibrator.prevalence.values()) == pytest.approx(1.0)
    i = 0
    features = {n: float(v) for n, v in zip(subtype_data.feature_names, subtype_data.x[i], strict=True)
                if not n.startswith(PRIMARY_PREFIX)}
    pred = bundle.predict(features, subtype_data.primary[i])
    assert pred.calibrated
    assert pred.confidence_threshold == bundle.calibrator.confidence.threshold
    assert pred.low_confidence is (pred.probability < pred.confidence_threshold)
    raw = bundle.predict_proba_raw(subtype_data.x[i : i + 1])
    expected = bundle.calibrator.apply(raw)[0]
    assert [pred.probabilities[c] for c in bundle.classes] == pytest.approx(list(expected))
    provenance = Provenance.from_manifest(manifest)
    assert provenance.training_data == "unspecified" and not provenance.is_demonstration
    assert "CV accuracy" in provenance.validation


def test_bundle_without_calibrator_still_loads(bundles, tmp_path):
    path = tmp_path / "old"
    shutil.copytree(bundles["her2-xgboost"][1], path)
    manifest = json.loads((path / MANIFEST).read_text())
    for key in ("calibration", "training_data", "training_data_statement", "validation"):
        manifest.pop(key)
    del manifest["artefacts"][CALIBRATION]
    (path / CALIBRATION).unlink()
    (path / MANIFEST).write_text(json.dumps(manifest))
    bundle = load_bundle(path)
    assert bundle.calibrator is None
    x = np.zeros((1, len(bundle.feature_names)))
    np.testing.assert_array_equal(bundle.predict_proba(x), bundle.predict_proba_raw(x))
    provenance = Provenance.from_manifest(manifest)
    assert provenance.training_data == "unspecified"
    assert provenance.validation == "validation performance not stated in the model bundle"


def test_tampered_calibration_is_refused(bundles, tmp_path):
    path = tmp_path / "tampered"
    shutil.copytree(bundles["her2-xgboost"][1], path)
    data = json.loads((path / CALIBRATION).read_text())
    data["temperature"] = 0.5
    (path / CALIBRATION).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path)


def _card(path: Path, tables, out: Path) -> str:
    bundle = load_bundle(path)
    data = load_dataset(tables.features_csv, tables.labels_csv, bundle.task, bundle.feature_names)
    evaluate(bundle, data, out, n_boot=20, seed=0)
    return (out / "model_card.md").read_text()


def test_model_card_shows_calibration_before_and_after(bundles, tables, tmp_path):
    text = _card(bundles["her2-xgboost"][1], tables, tmp_path / "card")
    assert "## Calibration and confidence" in text
    assert "training prevalence" in text
    assert "| training CV | top-label ECE |" in text
    assert "| this evaluation | positive: intercept / slope |" in text
    assert "| this evaluation, after | " in text  # the reliability table
    assert "**Confidence rule:**" in text
    metrics = json.loads((tmp_path / "card" / "metrics.json").read_text())
    assert set(metrics["calibration_check"]) >= {"before", "after"}


def test_model_card_without_calibrator_says_so(bundles, tables, tmp_path):
    path = tmp_path / "old"
    shutil.copytree(bundles["her2-xgboost"][1], path)
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["artefacts"][CALIBRATION]
    (path / CALIBRATION).unlink()
    (path / MANIFEST).write_text(json.dumps(manifest))
    text = _card(path, tables, tmp_path / "card")
    assert "has no calibrator" in text
