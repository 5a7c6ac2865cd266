"""Leakage check: on a noise-only cohort no recipe finds more than chance: the test-part AUC CI contains 0.5 and
the cross-validated AUC's CI does not lie above it; a pipeline that selects features on all rows before CV (the
leak the recipes avoid) fails the same check.

The CV side is checked one-sided on purpose: under the null, stratified CV on small samples is biased *below*
0.5 (each held-out fold's class mix mirrors the training folds'; Parker, Günter & Bedo, BMC Bioinformatics 2007,
"Stratification bias in low signal microarray studies"), so a CV AUC CI under 0.5 is expected there, while leakage
shows as a CI above it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.research.data import load_task_data
from node.research.pipeline import ModelSpec
from node.research.recipe import Recipe, Step, load_recipe
from node.research.run import _boot, auc_of, cross_validate, run_recipe
from node.research.synthetic import write_cohort


def _small(recipe: Recipe) -> Recipe:
    if recipe.grid is not None:
        # subtype-noprimary: with the primary as an input the subtype task has real signal even on noise features
        return recipe.with_overrides(grid="tiny", tasks=tuple(t for t in recipe.tasks if t.name == "subtype-noprimary"))
    selection = tuple(
        Step(s.kind, {**s.params, "max_iter": 10, "n_estimators": 40}) if s.kind == "boruta" else s
        for s in recipe.selection
    )
    classifiers = tuple(
        Step(c.kind, {**c.params, "n_estimators": 60}) if c.kind == "random_forest" else c
        for c in recipe.classifiers
    )
    return recipe.with_overrides(selection=selection, classifiers=classifiers, cv_folds=4)


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("noise"), n_patients=90, n_noise=6, seed=3, signal=0.0).folder


@pytest.mark.parametrize("name", ["yonsei", "her2-three-tier", "peritumoral-shells"])
def test_noise_only_cohort_gives_chance_for_every_recipe(noise: Path, name: str) -> None:
    result = run_recipe(_small(load_recipe(name)), noise, nested=False, seed=0, n_boot=200, with_shap=False)
    assert result.tasks
    for run in result.tasks:
        for model in run.results["models"]:
            cv, test = model["cv_auc_oof"], model["test"]["auc"]
            assert cv["ci95_low"] <= 0.5, (run.data.name, model["label"], cv)
            assert test["ci95_low"] <= 0.5 <= test["ci95_high"], (run.data.name, model["label"], test)
            assert not model["gdi"]["interpretable"]  # no training performance to decay


def test_selection_outside_the_folds_would_fail_the_chance_check(tmp_path: Path) -> None:
    """The counter-example: keep the 5 noise features most associated with the labels over ALL rows, then
    cross-validate: the out-of-fold AUC's CI leaves chance, which the recipes' in-fold selection avoids."""
    folder = write_cohort(tmp_path, n_patients=90, n_noise=60, seed=3, signal=0.0).folder
    recipe = load_recipe("peritumoral-shells")
    data = load_task_data(recipe, recipe.tasks[0], folder)
    y = data.y.astype(float)
    corr = np.abs([np.corrcoef(data.x[:, j], y)[0, 1] for j in range(data.x.shape[1])])
    leaked = tuple(int(j) for j in np.argsort(-np.nan_to_num(corr))[:5])
    rows = np.arange(data.y.size, dtype=np.int64)
    spec = ModelSpec("leaky", leaked, (), Step("logistic", {"C": 1.0}))
    out = cross_validate(spec, data, rows, recipe, seed=0)
    ci = _boot(lambda i: auc_of(data.y[i], out.oof[i]), data.groups, rows.size, 200, 0)
    assert ci["ci95_low"] > 0.5, ci
