"""Evaluation of the deep model the way the paper reports it, and honestly (numpy / statistics only, no torch).

From the out-of-fold probabilities of :func:`node.dl.train.cross_validate` (every variant on the same
patient-grouped folds):

* per variant and task: ROC-AUC per fold (mean ± SD, as the paper reports) and the pooled out-of-fold AUC with a
  patient-level bootstrap 95 % CI (:func:`node.evaluation.stats.bootstrap_ci`);
* the ablation table: each single modality vs the fusion, single-task vs multi-task, side by side;
* DeLong (:func:`node.evaluation.stats.delong_test`) of the fusion against a tree model (xgboost on the same
  radiomic features, fixed parameters, class-balanced) fitted on the same folds;
* calibration of the fusion (Brier score, slope, intercept, reliability bins);
* a model card (Markdown, :mod:`node.evaluation.card`'s renderer) and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from node.dl.data import DL_TASKS, DlDataset
from node.evaluation.blocks import Block
from node.evaluation.card import render_markdown
from node.evaluation.evaluate import clean_json
from node.evaluation.stats import bootstrap_ci, brier_score, calibration, delong_test, patient_resamples
from node.training.cv import balanced_weights
from node.vocabulary import DISCLAIMER

F64 = npt.NDArray[np.float64]
TREE_BASELINE = "tree model (xgboost on the radiomic features, same folds)"


def _auc(y: npt.NDArray[np.int64], p: F64) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else math.nan


def tree_baseline(data: DlDataset, fold: npt.NDArray[np.int64]) -> F64:
    """Out-of-fold P(positive) of an xgboost model per task on the radiomic features, on the given folds."""
    out = np.full((data.y.shape[0], len(DL_TASKS)), np.nan)
    for f in np.unique(fold):
        test, train = fold == f, fold != f
        for k in range(len(DL_TASKS)):
            known = train & (data.y[:, k] >= 0)
            y = data.y[known, k]
            if np.unique(y).size < 2:
                continue
            model = xgb.XGBClassifier(n_estimators=150, max_depth=2, learning_rate=0.05, subsample=0.8,
                                      n_jobs=1, random_state=0)
            model.fit(data.radiomics[known], y, sample_weight=balanced_weights(y))
            out[test, k] = model.predict_proba(data.radiomics[test])[:, 1]
    return out


def task_metrics(y: npt.NDArray[np.int64], p: F64, fold: npt.NDArray[np.int64], groups: npt.NDArray[np.str_],
                 n_boot: int, seed: int) -> dict[str, Any]:
    """Fold AUCs (mean ± SD) and the pooled AUC with its patient-bootstrap CI, on the rows with a label."""
    known = (y >= 0) & np.isfinite(p)
    y, p, fold, groups = y[known], p[known], fold[known], groups[known]
    per_fold = [_auc(y[fold == f], p[fold == f]) for f in np.unique(fold)]
    finite = [a for a in per_fold if math.isfinite(a)]
    ci = bootstrap_ci(lambda idx: _auc(y[idx], p[idx]), patient_resamples(groups, n_boot, seed), y.size)
    return {"n": int(y.size), "positives": int(y.sum()), "fold_auc": per_fold,
            "auc_mean": float(np.mean(finite)) if finite else math.nan,
            "auc_sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
            "pooled_auc": ci.to_json()}


def evaluate_cv(data: DlDataset, fold: npt.NDArray[np.int64], probabilities: dict[str, F64], *,
                n_boot: int = 500, seed: int = 0, with_trees: bool = True) -> dict[str, Any]:
    """Every metric of the module docstring as one JSON-able dictionary."""
    results: dict[str, Any] = {"variants": {}, "n_folds": int(np.unique(fold).size), "data": data.summary()}
    probs = dict(probabilities)
    if with_trees:
        probs[TREE_BASELINE] = tree_baseline(data, fold)
    for variant, p in probs.items():
        results["variants"][variant] = {
            t.value: task_metrics(data.y[:, k], p[:, k], fold, data.groups, n_boot, seed)
            for k, t in enumerate(DL_TASKS)
        }
    fusion = probs.get("fusion")
    if fusion is not None:
        results["calibration"] = {}
        for k, t in enumerate(DL_TASKS):
            known = data.y[:, k] >= 0
            cal = calibration(data.y[known, k], fusion[known, k])
            results["calibration"][t.value] = {"brier": brier_score(data.y[known, k], fusion[known, k]),
                                               **cal.to_json()}
        if with_trees:
            results["delong_fusion_vs_trees"] = {}
            for k, t in enumerate(DL_TASKS):
                known = (data.y[:, k] >= 0) & np.isfinite(probs[TREE_BASELINE][:, k])
                test = delong_test(data.y[known, k], fusion[known, k], probs[TREE_BASELINE][known, k])
                results["delong_fusion_vs_trees"][t.value] = test.to_json()
    return results


def _fmt(entry: dict[str, Any]) -> str:
    pooled = entry["pooled_auc"]
    if not math.isfinite(entry["auc_mean"]):
        return "n/a"
    sd = f" ± {entry['auc_sd']:.3f}" if math.isfinite(entry["auc_sd"]) else ""
    return (f"{entry['auc_mean']:.3f}{sd} (pooled {pooled['value']:.3f}, "
            f"{pooled['ci95_low']:.3f}–{pooled['ci95_high']:.3f})")


def ablation_rows(metrics: dict[str, Any]) -> list[tuple[str, ...]]:
    return [(variant, *(_fmt(per[t.value]) for t in DL_TASKS)) for variant, per in metrics["variants"].items()]


def card_blocks(metrics: dict[str, Any], manifest: dict[str, Any] | None) -> list[Block]:
    header = ("model", *(f"{t.value.upper()} ROC-AUC" for t in DL_TASKS))
    blocks = [
        Block("p", text=f"**{DISCLAIMER}**"),
        Block("h2", text="Intended use"),
        Block("p", text=str((manifest or {}).get("intended_use", "research use only"))),
        Block("h2", text="Training data"),
        Block("p", text=f"{(manifest or {}).get('training_data_statement', 'not stated')}; "
                        f"{json.dumps(metrics['data'], sort_keys=True)}"),
        Block("h2", text=f"Cross-validated ROC-AUC ({metrics['n_folds']} patient-grouped folds)"),
        Block("p", text="Mean ± SD over folds; in brackets the pooled out-of-fold AUC with its patient-level "
                        "bootstrap 95 % CI. Every row was trained and tested on the same folds."),
        Block("table", header=header, rows=tuple(ablation_rows(metrics))),
    ]
    if "delong_fusion_vs_trees" in metrics:
        rows = tuple((t, f"{v['auc_a']:.3f}", f"{v['auc_b']:.3f}", f"{v['p_value']:.3g}")
                     for t, v in metrics["delong_fusion_vs_trees"].items())
        blocks += [Block("h2", text="DeLong: fusion vs the tree model (same folds)"),
                   Block("table", header=("task", "fusion AUC", "tree AUC", "p"), rows=rows)]
    if "calibration" in metrics:
        rows = tuple((t, f"{v['brier']:.3f}", _num(v["slope"]), _num(v["intercept"]))
                     for t, v in metrics["calibration"].items())
        blocks += [Block("h2", text="Calibration of the fusion (out-of-fold)"),
                   Block("table", header=("task", "Brier", "slope", "intercept"), rows=rows)]
    return blocks


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def write_report(metrics: dict[str, Any], out_dir: Path, manifest: dict[str, Any] | None = None) -> Path:
    """``metrics.json`` and ``card.md`` in ``out_dir``; returns the card's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(clean_json(metrics), indent=2, sort_keys=True) + "\n",
                                          encoding="utf-8")
    card = out_dir / "card.md"
    card.write_text(render_markdown("Model card: multimodal deep model (ER, PR, HER2)",
                                    card_blocks(metrics, manifest)), encoding="utf-8")
    return card


