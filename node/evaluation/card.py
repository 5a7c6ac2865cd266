"""The model card (docs/method.md §7): one document model rendered to Markdown and HTML, plus ``model_card.json``.

Sections follow the checklist of docs/method.md §7 (identity and intended use, data, model, performance,
baseline, explainability, fairness subgroups, deployment guards); each JSON entry is tagged with the TRIPOD+AI /
CLAIM / METRICS items it serves. Numbers come from the bundle manifest (training) and the evaluation metrics.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from node.evaluation.blocks import Block
from node.evaluation.calibration_card import calibration_blocks
from node.evaluation.stats import format_p
from node.model.bundle import Bundle

__all__ = ["Block", "build_blocks", "card_json", "render_html", "render_markdown", "write_card"]

logger = logging.getLogger(__name__)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    return f"{_fmt(entry['value'])} ({_fmt(entry['ci95_low'])}–{_fmt(entry['ci95_high'])})"


def _p(p: float | None, n_resamples: int | None = None) -> str:
    """``p = 0.012``, ``p < 0.001`` (below the resampling resolution or the printed precision) or ``p = n/a``."""
    text = format_p(p, n_resamples)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _selector_fit(model: dict[str, Any]) -> tuple[str, ...]:
    fit = model.get("selector_fit")
    if not fit:
        return ()
    c = fit["chosen_C"]
    c_text = ", ".join(f"{v:.3g}" for v in c) + " (one per class)" if isinstance(c, list) else f"{c:.3g}"
    cap = "reached: it kept the largest coefficients" if fit["cap_bound"] else "not reached"
    return (f"LASSO penalty: {fit['method']}; chosen C {c_text}; the penalty kept {fit['n_kept_by_penalty']} "
            f"feature(s), {fit['n_selected']} used (safety cap {fit['safety_cap']}, {cap})"
            + (f"; {fit['note']}" if fit.get("note") else ""),)


def _gdi_text(gdi: dict[str, Any], base: dict[str, Any] | None) -> str:
    if gdi.get("reason"):
        return f"Generalisation Decay Index: not interpretable: {gdi['reason']}."
    if gdi.get("gdi") is None:  # an evaluation written before the GDI could say why
        return "Generalisation Decay Index: not available."
    text = (f"Generalisation Decay Index: {100 * gdi['gdi']:.1f} % (cross-validated training AUC "
            f"{_fmt(gdi['auc_train'])} → {_fmt(gdi['auc_test'])} here), zone **{gdi['zone']}** ({gdi['bands']})")
    if gdi.get("auc_train_source"):
        text += f"; training side: {gdi['auc_train_source']}"
    if gdi.get("auc_apparent_not_used") is not None:
        text += f"; the refit model's apparent AUC ({_fmt(gdi['auc_apparent_not_used'])}) is not used"
    text += ". The index measures decay from training to this table only, not usefulness."
    if base:
        gee, boot = base["accuracy_gee"], base["accuracy_delta_bootstrap"]
        worse = (gee.get("p_value") is not None and gee["p_value"] < 0.05 and (gee.get("log_odds_ratio") or 0) < 0)
        if worse or boot["ci95_high"] < 0:
            text += (" **Caution: the model is significantly less accurate than the non-conversion baseline on "
                     f"this table** (GEE {_p(gee.get('p_value'))}; accuracy Δ {_fmt(boot['delta'])}, 95 % CI "
                     f"{_fmt(boot['ci95_low'])}–{_fmt(boot['ci95_high'])}), whatever the zone.")
    return text


def _baseline_blocks(metrics: dict[str, Any], base: dict[str, Any]) -> list[Block]:
    n_boot = metrics["n_bootstrap"]
    gee, df1 = base["accuracy_gee"], base["f1_macro_delta_bootstrap"]
    dacc = base["accuracy_delta_bootstrap"]
    conv = base["conversion"]
    rows = [
        ("accuracy", _ci(metrics["accuracy"]), _ci(base["accuracy"]),
         f"GEE {_p(gee['p_value'])} {gee['note']}".strip()
         + f"; Δ {_fmt(dacc['delta'])} ({_fmt(dacc['ci95_low'])}–{_fmt(dacc['ci95_high'])}), bootstrap "
         f"{_p(dacc['p_value'], n_boot)}"
         + (f"; exact McNemar {_p(base['accuracy_mcnemar_exact_p'])}"
            if base.get("accuracy_mcnemar_exact_p") is not None else "")),
        ("F1-macro", _ci(metrics["f1_macro"]), _ci(base["f1_macro"]),
         f"Δ {_fmt(df1['delta'])} ({_fmt(df1['ci95_low'])}–{_fmt(df1['ci95_high'])}), bootstrap "
         f"{_p(df1['p_value'], n_boot)}"),
    ]
    comparison = base.get("auc_delong_vs_baseline")
    if comparison:
        for c, d in comparison["comparisons"].items():
            if d is not None:
                rows.append((f"AUC {c}" if len(comparison["comparisons"]) > 1 else "AUC", _fmt(d["auc_a"]),
                             _fmt(d["auc_b"]), f"DeLong {_p(d['p_value'])}"))
    elif "auc_delong_model_vs_baseline" in base:
        d = base["auc_delong_model_vs_baseline"]
        rows.append(("AUC", _fmt(d["auc_a"]), _fmt(d["auc_b"]), f"DeLong {_p(d['p_value'])}"))
    blocks = [
        Block("p", f"Baseline: {base['definition']}. Bootstrap p rule: {df1['p_rule']}; {n_boot} resamples, so "
                   f"'{format_p(0.0, n_boot)}' means no resample crossed zero."),
        Block("table", header=("metric", "model", "baseline", "test"), rows=tuple(rows)),
    ]
    if comparison:
        blocks.append(Block("p", f"AUC comparison: {comparison['scheme']}; the baseline is a hard label, so its "
                                 "AUC is that of a single operating point."))
    by = base.get("accuracy_gee_by_subtype")
    if by:
        strata_rows = tuple(
            (f"{label}: {key}", f"{v['n_lesions']} / {v['n_patients']}", _fmt(v["accuracy_a"]), _fmt(v["accuracy_b"]),
             _p(v["gee"]["p_value"]) + (f" ({v['gee']['note']})" if v["gee"].get("note") else ""))
            for label, kind in (("subtype", "true_class"), ("primary", "primary_subtype"))
            for key, v in by.get(kind, {}).items()
        )
        blocks += [
            Block("p", f"Per-subtype GEE (model vs baseline accuracy within each true class and each primary "
                       f"subtype): {by['note']}."),
            Block("table", header=("stratum", "lesions / patients", "model accuracy", "baseline accuracy", "GEE"),
                  rows=strata_rows),
        ]
    blocks.append(Block("p", (
        f"Conversion cases corrected: {conv['model_correct_on_converted']} of {conv['n_converted']}; "
        f"non-conversion cases kept: {conv['model_correct_on_not_converted']} of {conv['n_not_converted']}."
    )))
    return blocks


def build_blocks(bundle: Bundle, metrics: dict[str, Any], plots: dict[str, str]) -> list[Block]:
    man = bundle.manifest
    training, model, tm = man["training"], man["model"], man["metrics"]
    blocks: list[Block] = [
        Block("p", f"**{man['disclaimer'].upper()}.** {man['intended_use']}"),
        *([Block("p", f"**Training data: {man['data_source']}**")] if man.get("data_source") else []),
        Block("h2", "Identity"),
        Block("table", header=("field", "value"), rows=(
            ("name / version", f"{man['name']} {man['version']}"),
            ("created (UTC)", man["created_utc"]),
            ("task / classes", f"{man['task']}: {', '.join(man['classes'])}"),
            ("radiomics parameter file SHA-256", str(man["radiomics_config"].get("sha256"))),
            *((f"artefact {k}", v) for k, v in man["artefacts"].items()),
        )),
        Block("p", f"Out of scope: {man['out_of_scope']}"),
        Block("h2", "Data"),
        Block("table", header=("set", "lesions", "patients", "class counts"), rows=(
            ("training", _fmt(training["n_lesions"]), _fmt(training["n_patients"]),
             ", ".join(f"{k} {v}" for k, v in training["class_counts"].items())),
            ("this evaluation", _fmt(metrics["n_lesions"]), _fmt(metrics["n_patients"]),
             ", ".join(f"{k} {v}" for k, v in metrics["class_counts"].items())),
        )),
        Block("h2", "Model"),
        Block("list", items=(
            f"Pipeline: RobustScaler → {model['selector']['kind']} {model['selector']['params']} → "
            f"{model['classifier']['kind']} {model['classifier']['params']}",
            f"Selected inputs ({len(model['selected_features'])}): {', '.join(model['selected_features'])}",
            f"Class imbalance: {model['class_weighting']}; seed {model['seed']}; grid '{model['grid']}' "
            f"({training['search_space']['n_candidates']} candidates); LASSO variant: {model['lasso_variant']}",
            *_selector_fit(model),
            f"Primary-subtype encoding: {man['primary_subtype_encoding'] or 'not an input'}",
            f"Artefact format: {model['artefact_format']} (no pickle)",
        )),
        Block("h2", "Training performance"),
        Block("table", header=("classifier family", f"best CV {tm['scoring']} (mean ± SD)", "selector"), rows=tuple(
            (kind, f"{_fmt(v['mean'])} ± {_fmt(v['sd'])}", v["selector"])
            for kind, v in tm["cv_best_per_classifier"].items()
        )),
        Block("p", (
            f"Chosen candidate: CV {tm['scoring']} {_fmt(tm['cv_best']['mean'])} ± {_fmt(tm['cv_best']['sd'])} over "
            f"{tm['cv_folds']} patient-grouped folds (optimistic: the same CV chose it). Apparent (refit, training "
            f"data): accuracy {_fmt(tm['apparent']['accuracy'])}, F1-macro {_fmt(tm['apparent']['f1_macro'])}, "
            f"AUC {_fmt(tm['apparent']['auc'])}."
            + (f" Nested CV (honest): {tm['nested']['scoring']} {_fmt(tm['nested']['mean'])} ± "
               f"{_fmt(tm['nested']['sd'])}; pooled AUC {_fmt(tm['nested']['pooled_auc'])}."
               if "nested" in tm else " Nested CV was not run.")
            + (f" Permutation null ({tm['permutation_null']['n_permutations']} patient-level label permutations): "
               f"null mean {_fmt(tm['permutation_null']['null_mean'])}, 95th percentile "
               f"{_fmt(tm['permutation_null']['null_95th_percentile'])}, "
               f"{_p(tm['permutation_null']['p_value'], tm['permutation_null']['n_permutations'])}."
               if "permutation_null" in tm else " No permutation null was run.")
            + (f" Cross-validated training AUC: {_fmt(tm['cv_training_auc']['auc'])} "
               f"({tm['cv_training_auc']['source']})." if tm.get("cv_training_auc") else "")
        )),
        Block("h2", "Evaluation performance"),
        Block("table", header=("metric", "value (95 % CI)"), rows=(
            ("accuracy", _ci(metrics["accuracy"])),
            ("F1-macro", _ci(metrics["f1_macro"])),
            ("AUC (macro one-vs-rest)", _fmt(metrics["auc_macro"])),
            ("Brier", _fmt(metrics.get("brier", metrics.get("brier_multiclass")))),
            *((f"calibration slope / intercept {c}", f"{_fmt(cal['slope'])} / {_fmt(cal['intercept'])}")
              for c, cal in metrics["calibration"].items()),
            *((f"AUC {c} (DeLong)", f"{_fmt(a['auc'])} ({_fmt(a['ci95_low'])}–{_fmt(a['ci95_high'])})")
              for c, a in metrics["auc_ovr"].items() if a is not None),
            *((f"correct rate {c}", f"{v['correct']}/{v['total']}") for c, v in metrics["per_class"].items()),
        )),
        Block("p", f"Bootstrap: {metrics['bootstrap']}, {metrics['n_bootstrap']} resamples, seed {metrics['seed']}."),
        Block("table", header=("true \\ predicted", *metrics["classes"]), rows=tuple(
            (c, *(str(v) for v in row))
            for c, row in zip(metrics["classes"], metrics["confusion_matrix"]["matrix"], strict=True)
        )),
    ]
    blocks += calibration_blocks(bundle, metrics)
    base = metrics.get("baseline")
    if metrics.get("gdi"):
        blocks.append(Block("p", _gdi_text(metrics["gdi"], base)))
    blocks.append(Block("h2", "Comparison with the non-conversion baseline"))
    if base:
        blocks += _baseline_blocks(metrics, base)
    else:
        blocks.append(Block("p", "No non-conversion baseline exists for this task or the primary subtype is missing."))
    blocks += [
        Block("h2", "Explainability (SHAP)"),
        Block("table", header=("input", f"mean |SHAP| ({metrics['shap']['units']})"), rows=tuple(
            (r["feature"], _fmt(r["mean_abs_total"], 4)) for r in metrics["shap"]["ranking"][:10]
        )),
        Block("h2", "Subgroups (fairness)"),
        Block("table", header=("subgroup", "n", "accuracy"), rows=tuple(
            (f"{kind}: {key}", str(v["n"]), _fmt(v["accuracy"]))
            for kind, groups in metrics["subgroups"].items() for key, v in groups.items()
        )),
        Block("h2", "Plots"),
        *(Block("img", text=f) for f in plots.values()),
        Block("h2", "Deployment guards and limitations"),
        Block("list", items=(
            "No reference, no prediction: when the pons reference is missing, fails its QC or a supplied reference "
            "segment is implausible, the node reports every lesion as not assessed, with a coded reason, instead of "
            "predicting it (a whole-brain reference exists only as a research setting, and the SR then names it).",
            "Scope checks before prediction: segments that are oedema, necrosis, cysts, haemorrhage or cavities, "
            "lesions below the minimum volume (0.1 mL shipped) and T1CE slices thicker than 3 mm are not assessed; "
            "lesions under 1 mL, slices over 1.5 mm, 2D T1CE and field strengths other than 1.5/3 T are warned about "
            "in the SR.",
            "Each prediction carries an out-of-distribution flag when its inputs leave the training range.",
            "A bundle refuses features extracted with a different radiomics parameter file or feature list.",
            "Bootstrap and GEE are clustered on patient; small test sets give wide intervals.",
            "Synthetic or single-site evaluations do not establish clinical validity.",
        )),
    ]
    return blocks


def render_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "list":
            lines += [*(f"- {item}" for item in b.items), ""]
        elif b.kind == "img":
            lines += [f"![{b.text}]({b.text})", ""]
        elif b.kind == "table":
            lines += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in b.rows]
            lines.append("")
    return "\n".join(lines)


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, blocks: list[Block]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind == "h2":
            body.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "img":
            body.append(f'<p><img src="{html.escape(b.text)}" alt="{html.escape(b.text)}" style="max-width:640px"></p>')
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:2px 6px;font-size:90%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def card_json(bundle: Bundle, metrics: dict[str, Any]) -> dict[str, Any]:
    """Machine-readable card in the MONAI ``metadata.json`` spirit, entries tagged with checklist items."""
    man = bundle.manifest
    return {
        "version": man["version"],
        "task": {"value": man["task"], "tags": ["TRIPOD+AI 3a", "CLAIM intended use"]},
        "description": {"value": man["intended_use"], "tags": ["TRIPOD+AI 3b", "TRIPOD+AI 4"]},
        "disclaimer": man["disclaimer"],
        "out_of_scope": man["out_of_scope"],
        "label_classes": man["classes"],
        "pred_classes": man["classes"],
        "artefact_sha256": man["artefacts"],
        "radiomics_config_sha256": {"value": man["radiomics_config"].get("sha256"), "tags": ["METRICS 13"]},
        "package_versions": man["library_versions"],
        "data_source": {"training": man["training"], "tags": ["TRIPOD+AI 5a", "TRIPOD+AI 20a", "METRICS 18"]},
        "model": {"value": man["model"], "tags": ["TRIPOD+AI 12c", "METRICS 14-16"]},
        "training_metrics": {"value": man["metrics"], "tags": ["METRICS 26"]},
        "eval_metrics": {"value": metrics, "tags": ["TRIPOD+AI 23a", "METRICS 20-22", "METRICS 27"]},
        "fairness": {"value": metrics["subgroups"], "tags": ["TRIPOD+AI 3c", "TRIPOD+AI 23b"]},
    }


def write_card(bundle: Bundle, metrics: dict[str, Any], plots: dict[str, str], out_dir: Path) -> None:
    """Write ``model_card.md``, ``model_card.html`` and ``model_card.json`` into ``out_dir``."""
    title = f"Model card: {bundle.manifest['name']} {bundle.manifest['version']}"
    blocks = build_blocks(bundle, metrics, plots)
    (out_dir / "model_card.md").write_text(render_markdown(title, blocks), encoding="utf-8")
    (out_dir / "model_card.html").write_text(render_html(title, blocks), encoding="utf-8")
    (out_dir / "model_card.json").write_text(json.dumps(card_json(bundle, metrics), indent=1) + "\n", encoding="utf-8")
    logger.info("model card written to %s", out_dir)
