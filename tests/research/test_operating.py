"""Operating points and net benefit against hand-computed worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from node.evaluation import stats
from node.evaluation.operating import operating_points, rates, threshold_for_sensitivity, youden_threshold

Y = np.array([0, 0, 0, 1, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])


def test_youden_and_fixed_sensitivity_thresholds_by_hand() -> None:
    # t=0.8: sens 2/3, spec 1 (J 0.667); t=0.3: sens 1, spec 1/3 (J 0.333); t=0.9: sens 1/3, spec 1
    assert youden_threshold(Y, S) == 0.8
    assert threshold_for_sensitivity(Y, S, 0.9) == 0.3
    r = rates(Y, S, 0.3)  # treat 0.4, 0.35, 0.8, 0.3, 0.9: TP 3, FP 2, TN 1, FN 0
    assert r == pytest.approx({"sensitivity": 1.0, "specificity": 1 / 3, "ppv": 3 / 5, "npv": 1.0})
    assert np.isnan(rates(Y, S, 0.95)["ppv"])  # nobody treated: PPV undefined, not 0


def test_operating_points_apply_the_chosen_threshold_to_the_other_set() -> None:
    groups = np.array(["a", "b", "c", "d", "e", "f"])
    points = operating_points(Y, S, Y, S + 0.05, groups, n_boot=200, seed=0)
    youden = points[0]
    assert youden.threshold == 0.8
    # on the shifted scores 0.85 and 0.95 pass, 0.35 does not: sensitivity 2/3, specificity 1
    assert youden.metrics["sensitivity"].estimate == pytest.approx(2 / 3)
    assert youden.metrics["specificity"].estimate == 1.0
    assert youden.metrics["sensitivity"].low <= 2 / 3 <= youden.metrics["sensitivity"].high
    with pytest.raises(ValueError):
        youden_threshold([1, 1], np.array([0.2, 0.3]))


def test_net_benefit_worked_example() -> None:
    """NB = TP/n − t/(1−t)·FP/n, worked by hand on ten cases (prevalence 0.3)."""
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.4, 0.15])
    # t=0.25: treated 0.9, 0.6 (TP 2) and 0.7, 0.3, 0.4 (FP 3): 0.2 − (1/3)(0.3) = 0.1
    # t=0.5: treated 0.9, 0.6 (TP 2) and 0.7 (FP 1): 0.2 − 1·0.1 = 0.1
    assert stats.net_benefit(y, p, [0.25, 0.5]) == pytest.approx([0.1, 0.1])
    # treat all: 0.3 − 0.7·t/(1−t): 0.3 − 0.7/3 at 0.25, 0.3 − 0.7 at 0.5
    assert stats.net_benefit_treat_all(y, [0.25, 0.5]) == pytest.approx([0.3 - 0.7 / 3, -0.4])
