"""LASSO selection: the penalty (chosen on patient-grouped inner folds), not a feature cap, decides what stays."""

from __future__ import annotations

import numpy as np
import pytest

from node.training.cv import fit_pipeline
from node.training.grid import StepSpec, make_selector
from node.training.lasso import GroupedLassoSelector

PLANTED = (0, 1, 2)


def _table(n_classes: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """150 patients with two lesions each; 3 planted features among 200 pure-noise ones."""
    rng = np.random.default_rng(seed)
    n_patients, per = 150, 2
    y_patient = np.arange(n_patients) % n_classes
    y = np.repeat(y_patient, per)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], per)
    x = rng.normal(size=(y.size, 203))
    for k, f in enumerate(PLANTED):
        x[:, f] += 1.5 * (y == (k % n_classes)) - (0.5 if n_classes == 2 else 0.0) * (y != (k % n_classes))
    x[:, 3:] += np.repeat(rng.normal(size=(n_patients, 200)), per, axis=0)  # patient-level noise: lesions alike
    return x, y.astype(np.int64), groups


@pytest.mark.parametrize("n_classes", [2, 3])
def test_penalty_keeps_the_planted_features_and_few_others(n_classes):
    x, y, groups = _table(n_classes)
    spec = StepSpec("l1", (("max_features", 100),))
    selector = make_selector(spec, x.shape[1], n_classes, seed=0)
    selector.fit(x, y, groups=groups)
    kept = set(np.flatnonzero(selector.get_support()).tolist())
    assert set(PLANTED) <= kept
    # binary: one head, a handful of noise features at the one-SE penalty; multi-class: the union of one head
    # per class (each admits some noise: LASSO's prediction-optimal penalty is not a variable-selection oracle)
    assert len(kept) <= (12 if n_classes == 2 else 60), f"the penalty kept {len(kept)} features"
    summary = selector.summary()
    assert summary["n_kept_by_penalty"] == len(kept) and not summary["cap_bound"]
    assert summary["chosen_C"] == selector.C_
    assert len(selector.heads_) == (1 if n_classes == 2 else n_classes)
    for head in selector.heads_:
        assert head["C"] in head["cs"]


def test_chosen_c_comes_from_patient_grouped_inner_folds():
    x, y, groups = _table(2)
    selector = GroupedLassoSelector(seed=3).fit(x, y, groups)
    assert len(selector.splits_) == 5
    seen = np.concatenate([va for _, va in selector.splits_])
    assert sorted(seen.tolist()) == list(range(y.size))
    for tr, va in selector.splits_:
        assert set(groups[tr]).isdisjoint(groups[va]), "a patient on both sides of an inner split"
    head = selector.heads_[0]
    losses = head["losses"]
    assert losses.shape == (5, head["cs"].size)
    # the one-SE rule over the recorded inner losses gives the chosen C
    mean = losses.mean(axis=0)
    se = losses.std(axis=0, ddof=1) / np.sqrt(5)
    best = int(np.argmin(mean))
    assert head["cs"][np.flatnonzero(mean <= mean[best] + se[best])[0]] == selector.C_
    # the "min" rule keeps at least as many features as the (sparser) one-SE rule
    loose = GroupedLassoSelector(seed=3, rule="min").fit(x, y, groups)
    assert loose.C_ >= selector.C_ and loose.get_support().sum() >= selector.get_support().sum()


def test_groups_reach_the_selector_inside_the_pipeline():
    x, y, groups = _table(2)
    spec = StepSpec("l1", (("max_features", 100),))
    rf = StepSpec("random_forest", (("max_depth", 3), ("n_estimators", 20)))
    pipe = fit_pipeline(spec, rf, x, y, 2, 0, groups)
    splits = pipe.named_steps["select"].splits_
    for tr, va in splits:
        assert set(groups[tr]).isdisjoint(groups[va])


def test_safety_cap_is_recorded_when_it_binds():
    x, y, groups = _table(2)
    selector = GroupedLassoSelector(max_features=2, seed=0, rule="min").fit(x, y, groups)
    assert selector.get_support().sum() == 2
    assert selector.summary()["cap_bound"] is True


def test_pure_noise_still_gives_an_input():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 50))
    y = np.arange(80) % 2
    groups = np.array([f"p{i}" for i in range(80)])
    selector = GroupedLassoSelector(seed=0).fit(x, y, groups)
    assert selector.get_support().sum() >= 1
    if selector.n_kept_by_penalty_ == 0:
        assert "kept no feature" in selector.note_
    with pytest.raises(ValueError, match="rule"):
        GroupedLassoSelector(rule="aic").fit(x, y, groups)
