"""Every evaluation statistic against a small case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from node.evaluation import stats

# Hand case: positives scored 0.8, 0.6; negatives 0.7, 0.2, 0.1.
# Per positive, the fraction of negatives below: 1, 2/3  -> AUC 5/6.
# Per negative, the fraction of positives above: 1/2, 1, 1.
# Var = var(1, 2/3)/2 + var(1/2, 1, 1)/3 = (1/18)/2 + (1/12)/3 = 1/36 + 1/36 = 1/18.
Y = np.array([1, 1, 0, 0, 0])
S = np.array([0.8, 0.6, 0.7, 0.2, 0.1])


def test_delong_auc_and_variance_by_hand():
    aucs, cov = stats.delong(Y, S)
    assert aucs[0] == pytest.approx(5 / 6)
    assert cov[0, 0] == pytest.approx(1 / 18)


def test_delong_ci_is_wald_interval_clipped():
    res = stats.delong_ci(Y, S)
    half = norm.ppf(0.975) * math.sqrt(1 / 18)
    assert res.auc == pytest.approx(5 / 6)
    assert res.variance == pytest.approx(1 / 18)
    assert res.low == pytest.approx(5 / 6 - half)
    assert res.high == 1.0  # 5/6 + 0.46 clipped


def test_delong_ties_count_half():
    # one positive, one negative, same score: AUC 1/2
    aucs, _ = stats.delong([1, 0], np.array([0.3, 0.3]))
    assert aucs[0] == pytest.approx(0.5)


def test_delong_comparison_by_hand():
    # B separates perfectly: AUC 1, constant components -> variance 0 and covariance 0 with A.
    perfect = np.array([0.9, 0.95, 0.1, 0.2, 0.3])
    res = stats.delong_test(Y, S, perfect)
    z = (5 / 6 - 1) / math.sqrt(1 / 18)
    assert res.auc_a == pytest.approx(5 / 6)
    assert res.auc_b == pytest.approx(1.0)
    assert res.z == pytest.approx(z)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(z)))
    same = stats.delong_test(Y, S, S)
    assert same.p_value == 1.0


def test_patient_bootstrap_resamples_patients_not_lesions():
    # patient A: 3 lesions all correct; patient B: 1 lesion wrong.
    groups = np.array(["A", "A", "A", "B"])
    y = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0])
    resamples = stats.patient_resamples(groups, 400, seed=1)
    values = {round(stats.accuracy_of(y, pred)(idx), 6) for idx in resamples}
    # resamples {A,A}: 1, {A,B}: 3/4, {B,B}: 0 -- never a lesion-level value such as 2/4
    assert values == {1.0, 0.75, 0.0}
    ci = stats.bootstrap_ci(stats.accuracy_of(y, pred), resamples, y.size)
    assert ci.estimate == pytest.approx(0.75)
    assert ci.low == 0.0 and ci.high == 1.0  # P({B,B}) = P({A,A}) = 1/4 > 2.5 %


def test_bootstrap_ci_degenerate_all_correct():
    groups = np.array(["a", "b", "c"])
    y = np.array([0, 1, 2])
    resamples = stats.patient_resamples(groups, 50, seed=0)
    ci = stats.bootstrap_ci(stats.accuracy_of(y, y), resamples, 3)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_p_rule():
    groups = np.array([f"p{i}" for i in range(6)])
    y = np.zeros(6, dtype=np.int64)
    better = np.zeros(6, dtype=np.int64)
    worse = np.array([0, 1, 0, 1, 0, 1])
    resamples = stats.patient_resamples(groups, 200, seed=3)
    same = stats.paired_bootstrap(stats.accuracy_of(y, worse), stats.accuracy_of(y, worse), resamples, 6)
    assert same.delta == 0.0 and same.p_value == 1.0
    diff = stats.paired_bootstrap(stats.accuracy_of(y, better), stats.accuracy_of(y, worse), resamples, 6)
    assert diff.delta == pytest.approx(0.5)
    # Δ <= 0 only when a resample holds no "worse-wrong" patient: (1/2)^6 per resample
    expected_zero = np.mean([np.all(worse[idx] == 0) for idx in resamples])
    assert diff.p_value == pytest.approx(min(1.0, 2 * expected_zero))


def test_gee_matches_sandwich_formula_by_hand():
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    groups = [f"p{i}" for i in range(a.size)]
    res = stats.gee_paired_accuracy(a, b, groups)
    # Saturated marginal model: beta = logit(p_a) - logit(p_b); robust variance by the delta method on
    # cluster-level residuals (no small-sample correction).
    n = a.size
    pa, pb = a.mean(), b.mean()
    va = np.mean((a - pa) ** 2) / n
    vb = np.mean((b - pb) ** 2) / n
    cab = np.mean((a - pa) * (b - pb)) / n
    beta = math.log(pa / (1 - pa)) - math.log(pb / (1 - pb))
    var = va / (pa * (1 - pa)) ** 2 + vb / (pb * (1 - pb)) ** 2 - 2 * cab / (pa * (1 - pa) * pb * (1 - pb))
    assert res.coefficient == pytest.approx(beta, rel=1e-6)
    assert res.std_error == pytest.approx(math.sqrt(var), rel=1e-4)
    assert res.p_value == pytest.approx(2 * norm.sf(beta / math.sqrt(var)), rel=1e-3)


def test_gee_degenerate_cases_are_reported_not_crashed():
    groups = ["a", "b", "c", "d"]
    always = stats.gee_paired_accuracy([True] * 4, [True, False, True, False], groups)
    assert math.isnan(always.p_value) and "separation" in always.note
    same = stats.gee_paired_accuracy([True, False, True, False], [True, False, True, False], groups)
    assert same.p_value == 1.0


def test_brier_by_hand():
    assert stats.brier_score([1, 0, 1, 0], np.array([0.9, 0.2, 0.6, 0.5])) == pytest.approx(
        (0.01 + 0.04 + 0.16 + 0.25) / 4
    )
    proba = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    # case 1 (y=0): 0.25 + 0.25 + 0; case 2 (y=2): 0.04 + 0.04 + 0.16
    assert stats.brier_multiclass(np.array([0, 2]), proba) == pytest.approx((0.5 + 0.24) / 2)


def test_net_benefit_by_hand():
    y = [1, 1, 0, 0, 0]
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    # t = 0.5: treat {0.9 (TP), 0.6 (FP)} -> 1/5 - 1 * 1/5 = 0
    # t = 0.3: treat {0.9, 0.4 (TP), 0.6 (FP)} -> 2/5 - (0.3/0.7) * 1/5
    nb = stats.net_benefit(y, p, [0.5, 0.3, 0.0])
    assert nb[0] == pytest.approx(0.0)
    assert nb[1] == pytest.approx(0.4 - 0.3 / 0.7 * 0.2)
    assert nb[2] == pytest.approx(0.4)  # t = 0: treat all -> prevalence
    assert stats.net_benefit_treat_all(y, [0.25])[0] == pytest.approx(0.4 - 0.6 / 3)
    with pytest.raises(ValueError):
        stats.net_benefit(y, p, [1.0])


@pytest.mark.parametrize(
    ("train", "test", "value", "zone"),
    [
        (0.90, 0.81, 0.10, "safe"),
        (0.80, 0.68, 0.15, "safe"),
        (0.90, 0.75, 1 / 6, "warning"),
        (1.00, 0.80, 0.20, "high risk"),
        (0.80, 0.40, 0.50, "high risk"),
    ],
)
def test_gdi_zones(train, test, value, zone):
    got, got_zone = stats.gdi(train, test)
    assert got == pytest.approx(value)
    assert got_zone == zone


def test_confusion_matrix_by_hand():
    cm = stats.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_calibration_of_calibrated_probabilities():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 20000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    cal = stats.calibration(y, p)
    assert cal.slope == pytest.approx(1.0, abs=0.08)
    assert cal.intercept == pytest.approx(0.0, abs=0.05)
    assert sum(cal.bin_counts) == p.size
    assert all(abs(o - m) < 0.05 for o, m in zip(cal.bin_observed, cal.bin_mean_predicted, strict=True))


def test_mcnemar_exact_by_hand():
    # 5 discordant pairs, all in favour of A: p = 2 * 0.5**5
    a = np.array([1, 1, 1, 1, 1, 1, 0], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 1, 0], dtype=bool)
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 * 0.5**5)
    assert stats.mcnemar_exact(a, a) == pytest.approx(1.0)
