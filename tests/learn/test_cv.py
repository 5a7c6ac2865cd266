"""Grouped CV: no patient on both sides of a split, reproducibility for a seed, failures scored, nested CV."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from node.model.bundle import sha256_file
from node.model.tasks import Task
from node.training.cv import _permute_by_patient, grid_search, grouped_folds, n_splits_for, permutation_null, score
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import StepSpec, describe_grid, grid, make_pipeline, selector_fit_params
from node.training.synthetic import write_tables
from node.training.train import TrainOptions, train


@pytest.fixture(scope="module")
def multi_lesion(tmp_path_factory):
    tables = write_tables(tmp_path_factory.mktemp("ml"), n_patients=60, n_noise=10, seed=3, lesions_per_patient=2)
    return load_dataset(tables.features_csv, tables.labels_csv, Task.SUBTYPE)


def test_folds_are_patient_grouped_and_stratified(multi_lesion):
    data = multi_lesion
    folds = grouped_folds(data.y, data.groups, 5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen.tolist()) == list(range(data.y.size))
    for train_idx, test_idx in folds:
        assert set(data.groups[train_idx]).isdisjoint(data.groups[test_idx])
        assert set(data.y[test_idx]) == set(range(4))  # every class in every test fold


def test_fold_count_reduced_for_rare_class():
    y = np.array([0] * 10 + [1] * 2)
    groups = np.array([f"p{i}" for i in range(12)])
    assert n_splits_for(y, groups, 5) == 2


def test_score_functions():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert score("accuracy", y, proba, 2) == 0.5
    assert score("roc_auc", y, proba, 2) == pytest.approx(0.75)  # pairs: (0.8>0.1), (0.8>0.7), (0.4>0.1), (0.4<0.7)
    assert score("balanced_accuracy", y, proba, 2) == 0.5
    with pytest.raises(ValueError):
        score("kappa", y, proba, 2)


def test_search_is_reproducible_and_failed_candidates_lose(multi_lesion):
    data = multi_lesion
    selectors, classifiers = grid("tiny")
    broken = StepSpec("kbest_f", (("k", -1),))  # an invalid k: every fit fails
    runs = [
        grid_search(data.x, data.y, data.groups, [*selectors, broken], classifiers, n_classes=4, seed=7,
                    n_splits=3, progress=False)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(  # NaN == NaN here: the failed candidate fails the same way
        [c.fold_scores for c in runs[0].candidates], [c.fold_scores for c in runs[1].candidates]
    )
    failed = [c for c in runs[0].candidates if c.selector == broken]
    assert all(c.mean == float("-inf") for c in failed)
    assert runs[0].best.selector != broken
    assert describe_grid("full")["n_candidates"] == len(grid("full")[0]) * len(grid("full")[1])
    pipe = make_pipeline(selectors[0], classifiers[0], data.x.shape[1], 4, 0)
    assert [name for name, _ in pipe.steps] == ["scale", "select", "clf"]


def test_same_seed_gives_identical_bundles_and_nested_metrics(multi_lesion, tmp_path):
    data = multi_lesion
    options = TrainOptions(task=Task.SUBTYPE, grid="tiny", n_splits=3, progress=False, seed=5)
    paths = [save_bundle(train(data, options), tmp_path / f"b{i}") for i in range(2)]
    for name in ("preprocess.json", "training_distribution.json"):
        assert sha256_file(paths[0] / name) == sha256_file(paths[1] / name)
    model_files = sorted(p.name for p in paths[0].iterdir() if p.name.startswith(("model", "trees")))
    assert model_files and all(sha256_file(paths[0] / f) == sha256_file(paths[1] / f) for f in model_files)
    result = train(data, dataclasses.replace(options, nested=True))
    nested = result.metrics()["nested"]
    assert len(nested["outer_scores"]) == 3
    assert 0.0 <= nested["pooled_accuracy"] <= 1.0
    assert nested["mean"] == pytest.approx(np.mean(nested["outer_scores"]))


def test_permutation_null_separates_signal_from_noise(tmp_path):
    selector, classifier = grid("tiny")[0][0], grid("tiny")[1][0]
    for signal, significant in ((3.0, True), (0.0, False)):
        tables = write_tables(tmp_path / str(signal), n_patients=60, n_noise=10, seed=4, signal=signal)
        data = load_dataset(tables.features_csv, tables.labels_csv, Task.HER2)
        result = permutation_null(data.x, data.y, data.groups, selector, classifier, n_classes=2, seed=0,
                                  n_splits=3, n_permutations=19, progress=False)
        assert len(result.null_scores) == 19
        assert (result.p_value <= 0.05) is significant, (signal, result.to_json())
        assert result.to_json()["p_value"] == pytest.approx(
            (1 + sum(s >= result.observed for s in result.null_scores)) / 20
        )


def test_patient_permutation_keeps_patients_together(multi_lesion):
    data = multi_lesion
    permuted = _permute_by_patient(data.y, data.groups, np.random.default_rng(0))
    for g in np.unique(data.groups):
        assert np.unique(permuted[data.groups == g]).size == 1


def test_evaluation_with_several_lesions_per_patient(multi_lesion, tmp_path):
    from node.evaluation.evaluate import compute_metrics
    from node.model.bundle import load_bundle

    data = multi_lesion
    patients = np.unique(data.groups)
    held_out = np.isin(data.groups, patients[::2])
    result = train(data.subset(~held_out), TrainOptions(task=Task.SUBTYPE, grid="tiny", n_splits=3, progress=False))
    bundle = load_bundle(save_bundle(result, tmp_path / "b"))
    m = compute_metrics(bundle, data.subset(held_out), n_boot=100)
    assert m["n_lesions"] == 2 * m["n_patients"] == int(held_out.sum())
    assert m["baseline"]["accuracy_gee"]["p_value"] is None or 0 <= m["baseline"]["accuracy_gee"]["p_value"] <= 1
    assert m["accuracy"]["ci95_low"] <= m["accuracy"]["value"] <= m["accuracy"]["ci95_high"]


def test_fold_scores_equal_fitting_the_whole_pipeline_per_fold(multi_lesion):
    """The search's shared scaler/selector fits are the same computation as one Pipeline fitted per fold."""
    from node.training.cv import balanced_weights, full_proba

    data = multi_lesion
    selectors, classifiers = grid("tiny")
    result = grid_search(data.x, data.y, data.groups, selectors, classifiers, n_classes=4, seed=2, n_splits=3,
                         progress=False)
    folds = grouped_folds(data.y, data.groups, 3, seed=2)
    for cand in result.candidates:
        manual = []
        for train_idx, test_idx in folds:
            pipe = make_pipeline(cand.selector, cand.classifier, data.x.shape[1], 4, 2)
            routed = {f"select__{k}": v for k, v in selector_fit_params(cand.selector, data.groups[train_idx]).items()}
            pipe.fit(data.x[train_idx], data.y[train_idx], clf__sample_weight=balanced_weights(data.y[train_idx]),
                     **routed)
            manual.append(score("accuracy", data.y[test_idx], full_proba(pipe, data.x[test_idx], 4), 4))
        assert cand.fold_scores == pytest.approx(manual)
