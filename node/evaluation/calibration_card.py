"""Calibration in the evaluation and the model card: before/after numbers, the reliability table, the rule.

:func:`calibration_check` measures, on the evaluated data, the classifier's own probabilities and the calibrated
ones the node serves (calibration intercept/slope per class, top-label ECE, a reliability table);
:func:`calibration_blocks` renders them, the patient-grouped CV numbers stored in the bundle, the prevalence the
model is calibrated to, and the low-confidence rule. Bundles without a calibrator get a plain statement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from node.evaluation.blocks import Block
from node.model.bundle import Bundle
from node.model.calibration import calibration_summary
from node.training.dataset import Dataset


def calibration_check(bundle: Bundle, data: Dataset) -> dict[str, Any] | None:
    """Before/after calibration on ``data`` (None when the bundle has no calibrator)."""
    if bundle.calibrator is None:
        return None
    raw = bundle.predict_proba_raw(data.x)
    calibrated = bundle.calibrator.apply(raw)
    y = np.asarray(data.y, dtype=np.int64)
    return {
        "before": calibration_summary(y, raw, bundle.classes),
        "after": calibration_summary(y, calibrated, bundle.classes),
        "note": "before = the classifier's own probabilities (balanced class weights); after = calibrated, as served",
    }


def _f(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _summary_rows(label: str, before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [(label, "top-label ECE", _f(before["ece"], 3), _f(after["ece"], 3))]
    for cls, b in before["per_class"].items():
        a = after["per_class"][cls]
        rows.append((label, f"{cls}: intercept / slope", f"{_f(b['intercept'])} / {_f(b['slope'])}",
                     f"{_f(a['intercept'])} / {_f(a['slope'])}"))
        rows.append((label, f"{cls}: mean predicted vs observed", f"{_f(b['mean_predicted'])} vs {_f(b['observed'])}",
                     f"{_f(a['mean_predicted'])} vs {_f(a['observed'])}"))
    return rows


def _reliability(label: str, rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [(label, f"{r['low']:.1f}-{r['high']:.1f}", str(r["n"]), _f(r["mean_predicted"]), _f(r["observed"]))
            for r in rows]


def calibration_blocks(bundle: Bundle, metrics: dict[str, Any]) -> list[Block]:
    """The "Calibration and confidence" section of the model card."""
    blocks = [Block("h2", "Calibration and confidence")]
    cal = bundle.calibrator
    if cal is None:
        return [*blocks, Block("p", "This bundle has no calibrator: its probabilities come from a class-weighted "
                                    "model and do not reflect any prevalence; read them as scores.")]
    d = cal.details
    prevalence = ", ".join(f"{c} {100 * p:.0f}%" for c, p in cal.prevalence.items())
    blocks.append(Block("p", (
        f"Probabilities are calibrated to the **training prevalence** ({prevalence}; {d.get('n_lesions')} lesions) "
        f"by temperature-and-bias scaling of the log-probabilities (T = {cal.temperature:.3f}), fitted on "
        f"out-of-fold probabilities of {d.get('cv_folds')}-fold patient-grouped cross-validation. At a site whose "
        "prevalence differs, the probabilities shift accordingly."
    )))
    rows = []
    if "before" in d and "after" in d:
        rows += _summary_rows("training CV", d["before"], d["after"])
    check = metrics.get("calibration_check")
    if check:
        rows += _summary_rows("this evaluation", check["before"], check["after"])
    blocks.append(Block("table", header=("data", "measure", "before calibration", "after calibration"),
                        rows=tuple(rows)))
    rel = []
    if check:
        rel += _reliability("this evaluation, before", check["before"]["reliability"])
        rel += _reliability("this evaluation, after", check["after"]["reliability"])
    elif "after" in d:
        rel += _reliability("training CV, after", d["after"]["reliability"])
    blocks.append(Block("p", "Reliability (top predicted class): lesions per bin of the top probability, its "
                             "mean, and how often that prediction was right."))
    blocks.append(Block("table", header=("data", "top probability", "lesions", "mean predicted", "observed correct"),
                        rows=tuple(rel)))
    if cal.confidence is not None:
        c = cal.confidence
        blocks.append(Block("p", (
            f"**Confidence rule:** {c.rule}. Threshold **{c.threshold:.2f}**: in CV "
            f"{100 * (c.cv_fraction_at_or_above or 0):.0f}% of the predictions reached it and were right "
            f"{_f(c.cv_accuracy_at_or_above)} of the time; below it {_f(c.cv_accuracy_below)}. The SR says "
            "'low confidence' for a head whose top probability is below its threshold."
        )))
    return blocks
