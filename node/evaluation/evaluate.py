"""Evaluation of a bundle on a labelled feature table: metrics JSON, PNG plots and the model card.

Metrics: accuracy and F1-macro with patient-level bootstrap 95 % CIs; per-class correct rates; confusion
matrix; one-vs-rest AUCs with DeLong CIs; Brier score; calibration; decision curves; the non-conversion
baseline side by side (accuracy compared by GEE clustered on patient, F1-macro by paired patient bootstrap,
per-subtype GEE, AUC by DeLong (binary, or one-vs-rest per class)); conversion / non-conversion cases;
accuracy by site and by primary subtype;
Generalisation Decay Index (cross-validated training AUC → this table's AUC, or why it cannot be read); SHAP
ranking.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from node.evaluation import stats
from node.evaluation.calibration_card import calibration_check
from node.model.bundle import Bundle
from node.training.dataset import Dataset, baseline_labels

logger = logging.getLogger(__name__)

DCA_THRESHOLDS: list[float] = [round(0.01 * i, 2) for i in range(1, 96)]
PLOTS = {
    "roc": "roc.png",
    "confusion": "confusion_matrix.png",
    "calibration": "calibration.png",
    "dca": "decision_curve.png",
    "shap": "shap_summary.png",
}


def clean_json(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    return value


def _ovr_score(proba: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
    return np.asarray(proba[:, k], dtype=np.float64)


def compute_metrics(bundle: Bundle, data: Dataset, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric of the evaluation, as a JSON-able dict (also returns the arrays the plots need)."""
    classes = bundle.classes
    k_classes = len(classes)
    y = data.y
    proba = bundle.predict_proba(data.x)
    pred = proba.argmax(axis=1).astype(np.int64)
    resamples = stats.patient_resamples(data.groups, n_boot, seed)
    n = y.size
    cm = stats.confusion_matrix(y, pred, k_classes)
    out: dict[str, Any] = {
        "task": bundle.task.value,
        "classes": list(classes),
        "n_lesions": int(n),
        "n_patients": data.n_patients,
        "class_counts": data.class_counts(),
        "n_bootstrap": n_boot,
        "seed": seed,
        "bootstrap": "patient-level (patients resampled with replacement, all their lesions kept); percentile CI",
        "accuracy": stats.bootstrap_ci(stats.accuracy_of(y, pred), resamples, n).to_json(),
        "f1_macro": stats.bootstrap_ci(stats.f1_macro_of(y, pred, k_classes), resamples, n).to_json(),
        "per_class": {
            c: {"correct": int(cm[i, i]), "total": int(cm[i].sum()),
                "rate": float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": {"rows": "true class", "columns": "predicted class", "labels": list(classes),
                             "matrix": cm.tolist()},
    }
    aucs: dict[str, Any] = {}
    for k, c in enumerate(classes):
        positives = y == k
        if k_classes == 2 and k == 0:
            continue
        if positives.all() or not positives.any():
            aucs[c] = None
            continue
        aucs[c] = stats.delong_ci(positives.astype(int), _ovr_score(proba, k)).to_json()
    out["auc_ovr"] = aucs
    valid = [v["auc"] for v in aucs.values() if v is not None]
    out["auc_macro"] = float(np.mean(valid)) if valid else None
    if k_classes == 2:
        out["brier"] = stats.brier_score(y, proba[:, 1])
        out["calibration"] = {classes[1]: stats.calibration(y, proba[:, 1]).to_json()}
    else:
        out["brier_multiclass"] = stats.brier_multiclass(y, proba)
        out["calibration"] = {c: stats.calibration(y == k, proba[:, k]).to_json() for k, c in enumerate(classes)}
    out["calibration_check"] = calibration_check(bundle, data)
    dca_classes = [1] if k_classes == 2 else list(range(k_classes))
    out["decision_curve"] = {
        "thresholds": DCA_THRESHOLDS,
        "net_benefit_rule": "TP/n - t/(1-t) * FP/n (one-vs-rest for multi-class)",
        "curves": {
            classes[k]: {
                "model": stats.net_benefit(y == k, proba[:, k], DCA_THRESHOLDS).tolist(),
                "treat_all": stats.net_benefit_treat_all(y == k, DCA_THRESHOLDS).tolist(),
                "treat_none": 0.0,
            }
            for k in dca_classes
        },
    }
    training_metrics = bundle.manifest.get("metrics", {})
    cv_auc = training_metrics.get("cv_training_auc") or {}
    assessment = stats.gdi_assess(cv_auc.get("auc"), out["auc_macro"], int(np.bincount(y, minlength=k_classes).min()))
    out["gdi"] = {
        **assessment.to_json(),
        "auc_train_source": cv_auc.get("source"),
        "auc_apparent_not_used": training_metrics.get("apparent", {}).get("auc"),
    }
    out["baseline"] = _baseline(data, y, pred, proba, resamples, classes)
    out["subgroups"] = {
        "site": _subgroup_accuracy(data.sites, y, pred),
        "primary_subtype": _subgroup_accuracy(data.primary, y, pred),
    }
    values, base = bundle.shap_values(data.x)
    mean_abs = np.abs(values).mean(axis=0)  # (inputs, classes)
    order = np.argsort(-mean_abs.sum(axis=1), kind="stable")
    names = bundle.selected_features
    out["shap"] = {
        "units": bundle.shap_units,
        "base_values": dict(zip(classes, base.tolist(), strict=True)),
        "ranking": [
            {"feature": names[i], "mean_abs_total": float(mean_abs[i].sum()),
             "mean_abs_per_class": dict(zip(classes, mean_abs[i].tolist(), strict=True))}
            for i in order
        ],
    }
    out["_arrays"] = {
        "proba": proba, "pred": pred, "mean_abs_shap": mean_abs[order], "shap_names": [names[i] for i in order],
    }
    return out


def _subgroup_accuracy(
    keys: np.ndarray[Any, Any], y: np.ndarray[Any, Any], pred: np.ndarray[Any, Any]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in np.unique(keys):
        sel = keys == key
        result[str(key) or "unknown"] = {"n": int(sel.sum()), "accuracy": float(np.mean(y[sel] == pred[sel]))}
    return result


def _baseline(
    data: Dataset,
    y: np.ndarray[Any, Any],
    pred: np.ndarray[Any, Any],
    proba: np.ndarray[Any, Any],
    resamples: list[np.ndarray[Any, Any]],
    classes: tuple[str, ...],
) -> dict[str, Any] | None:
    found = baseline_labels(data.task, list(data.primary))
    if found is None:
        return None
    base, definition = found
    n = y.size
    k_classes = len(classes)
    converted = base != y
    out: dict[str, Any] = {
        "definition": definition,
        "accuracy": stats.bootstrap_ci(stats.accuracy_of(y, base), resamples, n).to_json(),
        "f1_macro": stats.bootstrap_ci(stats.f1_macro_of(y, base, k_classes), resamples, n).to_json(),
        "accuracy_gee": stats.gee_paired_accuracy(pred == y, base == y, list(data.groups)).to_json(),
        "accuracy_mcnemar_exact_p": (
            stats.mcnemar_exact(pred == y, base == y) if np.unique(data.groups).size == n else None
        ),
        "accuracy_delta_bootstrap": stats.paired_bootstrap(
            stats.accuracy_of(y, pred), stats.accuracy_of(y, base), resamples, n).to_json(),
        "f1_macro_delta_bootstrap": stats.paired_bootstrap(
            stats.f1_macro_of(y, pred, k_classes), stats.f1_macro_of(y, base, k_classes), resamples, n).to_json(),
        "accuracy_gee_by_subtype": {
            "note": "logistic GEE of per-lesion correctness (model vs baseline) within each stratum, clustered on "
            "patient, exchangeable working correlation, robust SE",
            "true_class": stats.gee_by_stratum(pred == y, base == y, data.groups, [classes[i] for i in y]),
            "primary_subtype": stats.gee_by_stratum(
                pred == y, base == y, data.groups, [str(p) or "unknown" for p in data.primary]),
        },
        "auc_delong_vs_baseline": stats.delong_compare(
            y, proba, np.eye(k_classes)[base], k_classes, list(classes)).to_json(),
        "conversion": {
            "n_converted": int(converted.sum()),
            "model_correct_on_converted": int(np.sum((pred == y) & converted)),
            "n_not_converted": int((~converted).sum()),
            "model_correct_on_not_converted": int(np.sum((pred == y) & ~converted)),
        },
    }
    if k_classes == 2 and 0 < y.sum() < n:
        out["auc_delong_model_vs_baseline"] = stats.delong_test(y, proba[:, 1], base.astype(np.float64)).to_json()
    return out


# ------------------------------------------------------------------------------------------------ plots
def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_plots(metrics: dict[str, Any], data: Dataset, out_dir: Path) -> dict[str, str]:
    """PNG plots next to the card; returns {plot: file name}."""
    arrays = metrics["_arrays"]
    proba, classes, y = arrays["proba"], metrics["classes"], data.y
    written: dict[str, str] = {}

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for k, c in enumerate(classes):
        if (len(classes) == 2 and k == 0) or metrics["auc_ovr"].get(c) is None:
            continue
        fpr, tpr, _ = roc_curve(y == k, proba[:, k])
        ax.plot(fpr, tpr, label=f"{c} (AUC {metrics['auc_ovr'][c]['auc']:.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (one-vs-rest)")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out_dir / PLOTS["roc"])
    written["roc"] = PLOTS["roc"]

    cm = np.asarray(metrics["confusion_matrix"]["matrix"])
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
    ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    _save(fig, out_dir / PLOTS["confusion"])
    written["confusion"] = PLOTS["confusion"]

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for c, cal in metrics["calibration"].items():
        ax.plot(cal["bin_mean_predicted"], cal["bin_observed"], "o-", label=c)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction", title="Calibration (one-vs-rest)")
    ax.legend(fontsize=8)
    _save(fig, out_dir / PLOTS["calibration"])
    written["calibration"] = PLOTS["calibration"]

    dca = metrics["decision_curve"]
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for c, curve in dca["curves"].items():
        line = ax.plot(dca["thresholds"], curve["model"], label=f"model: {c}")[0]
        ax.plot(dca["thresholds"], curve["treat_all"], ":", color=line.get_color(), label=f"treat all: {c}")
    ax.axhline(0.0, color="k", lw=0.8, label="treat none")
    ax.set_ylim(-0.1, max(0.1, max(max(c["model"]) for c in dca["curves"].values()) * 1.1))
    ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve")
    ax.legend(fontsize=7)
    _save(fig, out_dir / PLOTS["dca"])
    written["dca"] = PLOTS["dca"]

    mean_abs, names = arrays["mean_abs_shap"][:15], arrays["shap_names"][:15]
    fig = Figure(figsize=(7, 0.35 * len(names) + 1.5))
    ax = fig.subplots()
    left = np.zeros(len(names))
    for k, c in enumerate(classes):
        ax.barh(range(len(names)), mean_abs[:, k], left=left, label=c)
        left += mean_abs[:, k]
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    units = str(metrics["shap"]["units"]).split(" (")[0]
    ax.set(xlabel=f"mean |SHAP| ({units})", title="SHAP summary (model inputs, stacked by class)")
    ax.legend(fontsize=7)
    _save(fig, out_dir / PLOTS["shap"])
    written["shap"] = PLOTS["shap"]
    return written


def evaluate(bundle: Bundle, data: Dataset, out_dir: Path, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Compute the metrics, write ``metrics.json``, the plots and the model card into ``out_dir``."""
    from node.evaluation.card import write_card

    if data.task is not bundle.task:
        raise ValueError(f"evaluation table is for {data.task.value}, the bundle for {bundle.task.value}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(bundle, data, n_boot=n_boot, seed=seed)
    plots = write_plots(metrics, data, out_dir)
    metrics.pop("_arrays")
    metrics = clean_json(metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    write_card(bundle, metrics, plots, out_dir)
    logger.info("evaluation of %s written to %s", bundle.task.value, out_dir)
    return dict(metrics)
