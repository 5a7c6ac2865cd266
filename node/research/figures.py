"""The report's PNG figures: ROC curves, calibration, decision curves, SHAP summary (matplotlib, no display).

Decision curves use :func:`node.evaluation.stats.net_benefit` / ``net_benefit_treat_all`` (tested against a hand
calculation) rather than ``dcurves``: dcurves needs lifelines, which requires pandas < 3, and installing it would
downgrade the node's pandas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from node.evaluation import stats
from node.research.run import TaskRun

THRESHOLDS = [round(0.01 * i, 2) for i in range(1, 91)]


def _columns(run: TaskRun) -> list[int]:
    return [1] if run.data.n_classes == 2 else list(range(run.data.n_classes))


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path.name


def roc_figure(run: TaskRun, path: Path) -> str:
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    yte = run.data.y[run.test]
    for o in run.reported:
        assert o.test_proba is not None
        for k in _columns(run):
            yk = yte == k
            if yk.all() or not yk.any():
                continue
            fpr, tpr, _ = roc_curve(yk, o.test_proba[:, k])
            label = o.spec.label if run.data.n_classes == 2 else f"{o.spec.label}, {run.data.classes[k]} vs rest"
            ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"ROC, test part: {run.data.name}")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def calibration_figure(run: TaskRun, path: Path) -> str:
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    yte = run.data.y[run.test]
    proba = run.best.test_proba
    assert proba is not None
    for k in _columns(run):
        cal = stats.calibration((yte == k).astype(np.int64), proba[:, k], n_bins=5)
        ax.plot(cal.bin_mean_predicted, cal.bin_observed, "o-", label=f"{run.data.classes[k]}")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title=f"Calibration, test part ({run.best.spec.label})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def decision_figure(run: TaskRun, path: Path) -> str:
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    yte = run.data.y[run.test]
    k = _columns(run)[0] if run.data.n_classes == 2 else int(np.bincount(yte).argmin())
    yk = (yte == k).astype(np.int64)
    for o in run.reported:
        assert o.test_proba is not None
        ax.plot(THRESHOLDS, stats.net_benefit(yk, o.test_proba[:, k], THRESHOLDS), label=o.spec.label)
    ax.plot(THRESHOLDS, stats.net_benefit_treat_all(yk, THRESHOLDS), "--", color="grey", label="treat all")
    ax.axhline(0.0, color="black", lw=0.8, label="treat none")
    prevalence = float(yk.mean())
    ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05, max(0.05, prevalence * 1.1)),
           title=f"Decision curve, test part: {run.data.classes[k]}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def shap_figure(run: TaskRun, path: Path) -> str | None:
    if not run.shap:
        return None
    names = list(run.shap)[:15][::-1]
    fig = Figure(figsize=(6.4, 0.3 * len(names) + 1.4))
    ax = fig.add_subplot()
    ax.barh(names, [run.shap[n] for n in names], color="#4477aa")
    ax.set(xlabel=f"mean |SHAP| ({run.shap_units or 'model output'})",
           title=f"SHAP summary, test part ({run.best.spec.label})")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)
