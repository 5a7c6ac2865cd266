"""DeLong between any two models, p-values below the resampling resolution, per-subtype GEE and an honest GDI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from node.evaluation import stats
from node.evaluation.evaluate import evaluate
from node.model.bundle import load_bundle
from node.model.tasks import Task
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import StepSpec
from node.training.synthetic import write_tables
from node.training.train import TrainOptions, train

# DeLong, DeLong & Clarke-Pearson (1988), ovarian cancer with intestinal obstruction: albumin, total protein,
# K-G score (as 10 - score) and the outcome (1: benefits from surgery), the 43 complete records as listed in
# SAS/STAT's PROC LOGISTIC example "Comparing Receiver Operating Characteristic Curves". Integer K-G scores tie.
DELONG_1988 = np.array([
    [3.0, 5.8, 10, 0], [3.2, 6.3, 5, 1], [3.9, 6.8, 3, 1], [2.8, 4.8, 6, 0], [3.2, 5.8, 3, 1], [0.9, 4.0, 5, 0],
    [2.5, 5.7, 8, 0], [1.6, 5.6, 5, 1], [3.8, 5.7, 5, 1], [3.7, 6.7, 6, 1], [3.2, 5.4, 4, 1], [3.8, 6.6, 6, 1],
    [4.1, 6.6, 5, 1], [3.6, 5.7, 5, 1], [4.3, 7.0, 4, 1], [3.6, 6.7, 4, 0], [2.3, 4.4, 6, 1], [4.2, 7.6, 4, 0],
    [4.0, 6.6, 6, 0], [3.5, 5.8, 6, 1], [3.8, 6.8, 7, 1], [3.0, 4.7, 8, 0], [4.5, 7.4, 5, 1], [3.7, 7.4, 5, 1],
    [3.1, 6.6, 6, 1], [4.1, 8.2, 6, 1], [4.3, 7.0, 5, 1], [4.3, 6.5, 4, 1], [3.2, 5.1, 5, 1], [2.6, 4.7, 6, 1],
    [3.3, 6.8, 6, 0], [1.7, 4.0, 7, 0], [3.7, 6.1, 5, 1], [3.3, 6.3, 7, 1], [4.2, 7.7, 6, 1], [3.5, 6.2, 5, 1],
    [2.9, 5.7, 9, 0], [2.1, 4.8, 7, 1], [2.8, 6.2, 8, 0], [4.0, 7.0, 7, 1], [3.3, 5.7, 6, 1], [3.7, 6.9, 5, 1],
    [3.6, 6.6, 5, 1],
])


def brute_force_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) from the definition: the kernel psi(X, Y) = 1, 1/2, 0 over every (positive, negative)
    pair, the structural components V10 (per positive) and V01 (per negative), their sample covariances S10 and
    S01, and var(AUC_a - AUC_b) = L S10 L'/m + L S01 L'/n with L = (1, -1). O(m n), no ranks."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    v10, v01, aucs = [], [], []
    for s in (a, b):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z).astype(float) + 0.5 * (x == z)
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    ell = np.array([1.0, -1.0])
    var = float(ell @ s10 @ ell / m + ell @ s01 @ ell / n)
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    return float(aucs[0]), float(aucs[1]), z, float(2 * norm.sf(abs(z)))


@pytest.mark.parametrize(("col_a", "col_b"), [(0, 2), (1, 2), (0, 1)])
def test_delong_matches_the_structural_components_on_delong_1988_data(col_a, col_b):
    y = DELONG_1988[:, 3].astype(int)
    a, b = DELONG_1988[:, col_a], DELONG_1988[:, col_b]
    auc_a, auc_b, z, p = brute_force_delong(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a)) and auc_b == pytest.approx(roc_auc_score(y, b))
    old = stats.delong_test(y, a, b)  # the signature the recipes use still works
    assert (old.auc_a, old.auc_b, old.z, old.p_value) == pytest.approx((auc_a, auc_b, z, p), rel=1e-9)
    new = stats.delong_compare(y, a, b, 2, ["no benefit", "benefit"])
    assert list(new.comparisons) == ["benefit"] and "binary" in new.scheme
    got = new.comparisons["benefit"]
    assert got is not None
    assert (got.auc_a, got.auc_b, got.z, got.p_value) == pytest.approx((auc_a, auc_b, z, p), rel=1e-9)


def test_delong_compare_multiclass_is_one_vs_rest_per_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    pa = rng.dirichlet(np.ones(3), size=y.size) + 0.6 * np.eye(3)[y]
    pb = rng.dirichlet(np.ones(3), size=y.size) + 0.2 * np.eye(3)[y]
    pa, pb = pa / pa.sum(axis=1, keepdims=True), pb / pb.sum(axis=1, keepdims=True)
    result = stats.delong_compare(y, pa, pb, 3, ["A", "B", "C"])
    assert "one-vs-rest" in result.scheme and list(result.comparisons) == ["A", "B", "C"]
    for k, name in enumerate("ABC"):
        expected = brute_force_delong((y == k).astype(int), pa[:, k], pb[:, k])
        got = result.comparisons[name]
        assert got is not None
        assert (got.auc_a, got.auc_b, got.z, got.p_value) == pytest.approx(expected, rel=1e-9)
    json.dumps(result.to_json())
    # a class absent from the table has no comparison; bad shapes are refused with a clear error
    absent = stats.delong_compare(y[y < 2], pa[y < 2], pb[y < 2], 3, ["A", "B", "C"])
    assert absent.comparisons["C"] is None and absent.comparisons["A"] is not None
    with pytest.raises(ValueError, match="shape"):
        stats.delong_compare(y, pa[:, :2], pb, 3)
    with pytest.raises(ValueError, match="class indices"):
        stats.delong_compare(y + 1, pa, pb, 3)


@pytest.mark.parametrize(
    ("p", "n", "text"),
    [
        (0.0, 1000, "< 0.001"),  # bootstrap: no resample crossed zero
        (0.002, 1000, "0.002"),
        (0.0, 2000, "< 0.0005"),
        (1 / 100, 99, "< 0.010"),  # permutation p (1 + 0) / (1 + 99): below 1/99
        (2 / 100, 99, "0.020"),  # one permutation at least as good
        (0.0004, None, "< 0.001"),  # analytic p (GEE, DeLong) below the printed precision
        (0.0371, None, "0.037"),
        (None, 1000, "n/a"),
        (float("nan"), None, "n/a"),
    ],
)
def test_format_p(p, n, text):
    assert stats.format_p(p, n) == text


def test_bootstrap_p_with_no_crossing_prints_below_one_over_b():
    y = np.arange(40) % 2
    better, worse = y.copy(), np.zeros(40, dtype=np.int64)
    resamples = stats.patient_resamples([f"p{i}" for i in range(40)], 1000, 0)
    comparison = stats.paired_bootstrap(stats.accuracy_of(y, better), stats.accuracy_of(y, worse), resamples, 40)
    assert comparison.p_value == 0.0
    assert stats.format_p(comparison.p_value, len(resamples)) == "< 0.001"


def test_gee_by_stratum_runs_the_gee_within_each_subtype():
    rng = np.random.default_rng(2)
    groups = np.repeat([f"p{i}" for i in range(60)], 2)
    strata = np.repeat(np.array(["HR+/HER2-", "TN", "HR-/HER2+"])[np.arange(60) % 3], 2)
    a = rng.random(120) < 0.8
    b = rng.random(120) < 0.6
    out = stats.gee_by_stratum(a, b, groups, strata)
    assert sorted(out) == ["HR+/HER2-", "HR-/HER2+", "TN"]
    for key, entry in out.items():
        sel = strata == key
        assert entry["n_lesions"] == 40 and entry["n_patients"] == 20
        assert entry["accuracy_a"] == pytest.approx(a[sel].mean())
        assert entry["gee"] == stats.gee_paired_accuracy(a[sel], b[sel], groups[sel]).to_json()
    with pytest.raises(ValueError, match="same length"):
        stats.gee_by_stratum(a, b, groups, strata[:-1])


@pytest.mark.parametrize(
    ("cv", "test", "min_count", "zone", "reason"),
    [
        (0.6, 0.55, 30, "safe", ""),
        (0.8, 0.6, 30, "high risk", ""),
        (None, 0.8, 30, None, "no cross-validated"),
        (0.48, 0.7, 30, None, "at or below chance"),
        (0.8, 0.5, 30, None, "does not discriminate"),
        (0.8, 0.7, 4, None, "too small"),
        (0.8, None, 0, None, "one class"),
    ],
)
def test_gdi_assessment_says_when_it_cannot_be_read(cv, test, min_count, zone, reason):
    got = stats.gdi_assess(cv, test, min_count)
    assert got.zone == zone
    if reason:
        assert reason in got.reason and got.value is None and not got.interpretable
    else:
        assert got.value == pytest.approx((cv - test) / cv) and got.interpretable


def test_gdi_uses_the_cross_validated_auc_not_the_refit_one(tmp_path):
    """A deep random forest on a weak signal: refit (apparent) AUC 1.0, out-of-fold AUC about 0.6."""
    tables = write_tables(tmp_path / "tables", n_patients=200, n_noise=20, seed=5, signal=1.3)
    data = load_dataset(tables.features_csv, tables.labels_csv, Task.ER)
    held_out = data.sites == sorted(set(data.sites))[-1]
    options = TrainOptions(task=Task.ER, seed=0, progress=False, n_splits=3, candidates=(
        (StepSpec("kbest_f", (("k", 8),)),),
        (StepSpec("random_forest", (("max_depth", None), ("n_estimators", 60))),),
    ))
    result = train(data.subset(~held_out), options)
    bundle = load_bundle(save_bundle(result, tmp_path / "bundle"))
    tm = bundle.manifest["metrics"]
    assert tm["apparent"]["auc"] > 0.999
    cv_auc = tm["cv_training_auc"]["auc"]
    assert 0.55 < cv_auc < 0.7, cv_auc
    metrics = evaluate(bundle, data.subset(held_out), tmp_path / "eval", n_boot=200)
    gdi = metrics["gdi"]
    assert gdi["auc_train"] == pytest.approx(cv_auc)
    assert gdi["auc_apparent_not_used"] > 0.999
    card = (tmp_path / "eval" / "model_card.md").read_text(encoding="utf-8")
    assert "AUC 1.000 →" not in card
    assert gdi["interpretable"] and gdi["gdi"] == pytest.approx((cv_auc - metrics["auc_macro"]) / cv_auc)
    assert gdi["zone"] == "safe" and f"cross-validated training AUC {cv_auc:.3f}" in card
    assert stats.gdi(1.0, metrics["auc_macro"])[1] == "high risk"  # what the refit AUC made of the same model
    assert "p = 0.000" not in card


def test_old_bundle_without_a_cv_auc_gets_a_reason_not_a_zone():
    got = stats.gdi_assess(None, 0.888, 46)
    assert got.zone is None and "retrain" in got.reason


def test_card_prints_p_below_one_over_b_not_zero():
    from node.evaluation.card import _baseline_blocks, render_markdown

    ci = {"value": 0.9, "ci95_low": 0.8, "ci95_high": 0.95}
    boot = {"delta": 0.1, "ci95_low": 0.05, "ci95_high": 0.15, "p_value": 0.0, "p_rule": stats.BOOTSTRAP_P_RULE}
    base = {
        "definition": "non-conversion", "accuracy": ci, "f1_macro": ci,
        "accuracy_gee": {"log_odds_ratio": 1.0, "robust_se": 0.2, "z": 5.0, "p_value": 5.7e-7, "note": ""},
        "accuracy_delta_bootstrap": boot, "f1_macro_delta_bootstrap": boot,
        "conversion": {"n_converted": 2, "model_correct_on_converted": 1, "n_not_converted": 8,
                       "model_correct_on_not_converted": 8},
    }
    metrics = {"n_bootstrap": 1000, "accuracy": ci, "f1_macro": ci}
    text = render_markdown("card", _baseline_blocks(metrics, base))
    assert "bootstrap p < 0.001" in text and "GEE p < 0.001" in text
    assert "0.000" not in text


def test_card_cautions_when_a_safe_model_is_significantly_worse_than_the_baseline():
    from node.evaluation.card import _gdi_text

    gdi = {**stats.gdi_assess(0.86, 0.888, 46).to_json(), "auc_train_source": "out-of-fold",
           "auc_apparent_not_used": 1.0}
    worse = {"accuracy_gee": {"p_value": 0.038, "log_odds_ratio": -0.9},
             "accuracy_delta_bootstrap": {"delta": -0.137, "ci95_low": -0.25, "ci95_high": -0.03}}
    text = _gdi_text(gdi, worse)
    assert "zone **safe**" in text and "significantly less accurate than the non-conversion baseline" in text
    assert "apparent AUC (1.000) is not used" in text
    better = {"accuracy_gee": {"p_value": 0.004, "log_odds_ratio": 0.7},
              "accuracy_delta_bootstrap": {"delta": 0.1, "ci95_low": 0.04, "ci95_high": 0.18}}
    assert "significantly less accurate" not in _gdi_text(gdi, better)
    unreadable = stats.gdi_assess(0.86, 0.45, 46).to_json()
    assert _gdi_text(unreadable, worse).startswith("Generalisation Decay Index: not interpretable: the test AUC")
