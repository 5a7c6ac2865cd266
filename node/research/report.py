"""The research report: ``report.md``, ``report.html`` (same content, self-contained apart from the PNGs beside
it) and ``results.json`` of a :class:`~node.research.run.RecipeRun`.

Sections per task: cohort, features kept, CV and test metrics with CIs, operating points, comparisons (DeLong,
baseline), figures (ROC, calibration, decision curve, SHAP), GDI, nested CV; then "how this compares with the
published study" with the paper's numbers beside ours and a caution that the data differ.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from node.research import figures
from node.research.run import RecipeRun, TaskRun

# Each row: (published quantity, published value, task of this recipe, what of ours goes beside it).
PUBLISHED: dict[str, dict[str, Any]] = {
    "s1": {
        "citation": "S1, Yonsei BCBM subtype radiomics (docs/method.md §1.6): 102 patients, two hospitals, brain MRI",
        "rows": [
            ("CV accuracy of the chosen pipeline (LASSO + XGBoost)", "0.805 ± 0.084", "subtype", "cv"),
            ("External accuracy, model", "0.902 (0.820–0.984)", "subtype", "test_accuracy"),
            ("External F1-macro, model", "0.861 (0.747–0.973)", "subtype", "test_f1"),
            ("External accuracy, non-conversion baseline", "0.765 (0.648–0.881)", "subtype", "baseline_accuracy"),
            ("Model vs baseline, accuracy by GEE", "p = 0.004", "subtype", "baseline_gee"),
            ("Features kept", "4 (3 radiomic + primary subtype)", "subtype", "n_kept"),
        ],
    },
    "s3": {
        "citation": "S3, HER2 three-tier IDC radiomics (Eur J Radiol Open 2024; docs/method.md §2): 402 patients, "
        "breast MRI, 1,502 features per sequence",
        "rows": [
            ("HER2-positive vs negative, RF AUC train / validation", "0.777 / 0.765", "her2-positive-vs-negative",
             "auc"),
            ("HER2-low vs HER2-zero, RF AUC train / validation", "0.731 / 0.713", "her2-low-vs-zero", "auc"),
            ("Selection", "ComBat → ICC > 0.75 → Wilcoxon → Boruta → simulated annealing", None, None),
        ],
    },
    "s4": {
        "citation": "S4, intratumoral + peritumoral DCE-MRI HER2 (BMC Cancer 2026; docs/method.md §2): 210 patients, "
        "breast",
        "rows": [
            ("Regions", "tumour + shells at 1, 3, 5 mm", None, None),
            ("Model", "LASSO + logistic regression; DeLong, calibration, DCA", None, None),
            ("HER2 AUC train / test", "not transcribed in docs/method.md: read them from the paper", "her2", "auc"),
            ("GDI zones", "≤ 15 % safe, 15–20 % warning, ≥ 20 % high risk", "her2", "gdi"),
        ],
    },
}
CAUTION = ("Caution: the published numbers come from another cohort (other patients, scanners, organ and "
           "labels). They are printed for orientation only; a difference between the columns is not evidence that "
           "either analysis is wrong, and the numbers are not comparable as a test.")


def _f(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ci(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    return f"{_f(d.get('value'))} ({_f(d.get('ci95_low'))}–{_f(d.get('ci95_high'))})"


def _p(p: Any, n_resamples: int | None = None) -> str:
    """A p-value; a bootstrap p of 0 is "< 1/B" (B resamples), never "0.000"."""
    if p is None or not isinstance(p, float) or not math.isfinite(p):
        return "—"
    if n_resamples and p < 1.0 / n_resamples:
        return f"< 1/{n_resamples} ({1.0 / n_resamples:.2g})"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


class Doc:
    """Blocks rendered to Markdown and to HTML from one list."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("t", (header, rows)))

    def img(self, name: str | None, alt: str) -> None:
        if name:
            self.blocks.append(("i", (name, alt)))

    def markdown(self) -> str:
        out: list[str] = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "t":
                header, rows = v
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
            else:
                out.append(f"![{v[1]}]({v[0]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        e = html.escape
        body: list[str] = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{e(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{e(v)}</p>")
            elif kind == "t":
                header, rows = v
                body.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>"
                            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                            + "</table>")
            else:
                body.append(f'<p><img src="{e(v[0])}" alt="{e(v[1])}"></p>')
        style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.2em .5em;"
                 "font-size:90%;text-align:left}img{max-width:100%}")
        return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _task_section(doc: Doc, run: TaskRun, out: Path, idx: int) -> None:
    r = run.results
    doc.h(2, f"Task {r['task']}: {' vs '.join(r['classes'])}")
    doc.h(3, "Cohort")
    doc.table(["", "value"], [
        ["lesions / patients", f"{r['n_lesions']} / {r['n_patients']}"],
        ["classes", ", ".join(f"{c}: {n}" for c, n in r["class_counts"].items())],
        ["train / test patients",
         f"{r['split']['train_patients']} / {r['split']['test_patients']} ({r['split']['rule']})"],
        ["inputs in the table", str(r["n_inputs"])],
        ["feature sets", "; ".join(f"{k}: {v['n_columns']} columns ({', '.join(v['regions'])})"
                                   for k, v in r["feature_sets"].items())],
    ])
    for note in r["notes"]:
        doc.p(f"Note: {note}.")
    for set_name, missing in r["missing"].items():
        doc.p(f"Missing from the table for feature set {set_name}: {', '.join(missing)}. The recipe ran on the "
              "columns present.")
    if "icc" in r:
        icc = r["icc"]
        doc.p(f"Stability: {icc['kind']} between the two segmentations, threshold {icc['threshold']}: "
              f"{icc['n_stable']} of {icc['n_assessed']} features kept (computed once on all lesions; it uses no "
              "labels).")
    doc.h(3, "Candidates (CV on the training part)")
    cands = sorted(r["candidates"], key=lambda c: -(c["cv_mean"] if c["cv_mean"] is not None else -1e9))[:12]
    doc.table(["feature set", "pipeline", f"CV {r['models'][0]['cv_scoring']} (mean ± SD)"],
              [[c["feature_set"], c["pipeline"], f"{_f(c['cv_mean'])} ± {_f(c['cv_sd'])}"] for c in cands])
    doc.p(f"Best by CV: {r['best']}.")
    doc.h(3, "Metrics: cross-validated (training part) and test part, 95 % patient-bootstrap CIs")
    rows = []
    for m in r["models"]:
        t = m["test"]
        gdi = m["gdi"]
        gdi_text = (f"{_f(gdi['value'])} ({gdi['zone']})" if gdi["interpretable"]
                    else f"{_f(gdi['value'])} — not interpretable")
        rows.append([m["label"], _ci(m["cv_auc_oof"]), _ci(t["auc"]), _ci(t["accuracy"]), _ci(t["f1_macro"]),
                     _f(t["brier"]), gdi_text])
    doc.table(["model", "CV AUC (out-of-fold)", "test AUC", "test accuracy", "test F1-macro", "test Brier", "GDI"],
              rows)
    doc.p("GDI = (AUC_train − AUC_test) / AUC_train with AUC_train the out-of-fold CV AUC of the training part "
          "(never the refit model's apparent AUC); zones ≤ 0.15 safe, 0.15–0.20 warning, ≥ 0.20 high risk. It "
          "cannot be interpreted when the CV AUC's CI includes 0.5.")
    if any(m["cv_auc_oof"]["ci95_high"] is not None and m["cv_auc_oof"]["ci95_high"] < 0.5 for m in r["models"]):
        doc.p("A cross-validated AUC below 0.5 on weak-signal data is the known pessimistic bias of stratified CV "
              "(Parker, Günter & Bedo 2007, stratification bias), not a reversed signal: read it as no signal.")
    doc.h(3, "Features kept")
    for m in r["models"]:
        freq = ", ".join(f"{k} ({v})" for k, v in list(m["selection_frequency"].items())[:10])
        doc.p(f"{m['label']} ({m['pipeline']}): {len(m['features_kept'])} kept by the refit: "
              f"{', '.join(m['features_kept'][:15])}{' …' if len(m['features_kept']) > 15 else ''}. "
              f"Times kept across CV folds: {freq}.")
    doc.h(3, "Operating points (test part; thresholds chosen on the out-of-fold training scores)")
    op_rows = []
    for m in r["models"]:
        for cls, points in m["operating_points"].items():
            for pt in points:
                op_rows.append([m["label"], cls, pt["name"], _f(pt["threshold"]), _ci(pt["sensitivity"]),
                                _ci(pt["specificity"]), _ci(pt["ppv"]), _ci(pt["npv"])])
    doc.table(["model", "positive class", "point", "threshold", "sensitivity", "specificity", "PPV", "NPV"], op_rows)
    doc.h(3, "Comparisons")
    comp_rows = []
    sc = r.get("feature_set_comparison")
    pairs = [] if sc and len(r["models"]) == 2 else r["comparisons"]  # the feature-set row says it already
    for c in pairs:
        for d in c["delong_test"]:
            comp_rows.append([f"{c['a']} vs {c['b']}", r["classes"][d["class"]], "test",
                              f"{_f(d['auc_a'])} vs {_f(d['auc_b'])}", _p(d["p_value"])])
    if sc:
        for where in ("delong_test", "delong_cv_oof"):
            for d in sc[where]:
                comp_rows.append([f"{sc['b']} vs {sc['a']}", r["classes"][d["class"]],
                                  "test" if where == "delong_test" else "CV out-of-fold",
                                  f"{_f(d['auc_a'])} vs {_f(d['auc_b'])}", _p(d["p_value"])])
    if comp_rows:
        doc.table(["models", "class (one-vs-rest)", "data", "AUC a vs b", "DeLong p"], comp_rows)
    base = r.get("baseline")
    if base:
        best = next(m for m in r["models"] if m["label"] == r["best"])
        doc.p(f"Baseline ({base['definition']}), test part: accuracy {_ci(base['accuracy'])} vs model "
              f"{_ci(best['test']['accuracy'])}, GEE p = {_p(base['accuracy_gee']['p_value'])}; F1-macro "
              f"{_ci(base['f1_macro'])} vs model {_ci(best['test']['f1_macro'])}, paired bootstrap p = "
              f"{_p(base['f1_macro_paired_bootstrap']['p_value'], r.get('n_bootstrap'))}.")
    else:
        doc.p("Baseline: no clinical baseline for this task; each AUC is compared with chance (0.5) by its CI, and "
              "the models with each other by DeLong.")
    if "nested" in r:
        n = r["nested"]
        doc.h(3, "Nested CV (all patients; model choice inside each outer training fold)")
        doc.table(["AUC", "accuracy", "F1-macro"], [[_ci(n["auc"]), _ci(n["accuracy"]), _ci(n["f1_macro"])]])
        doc.p("Chosen per outer fold: " + "; ".join(n["chosen_per_outer_fold"]) + ".")
    doc.h(3, "Figures")
    prefix = f"task{idx}_"
    doc.img(figures.roc_figure(run, out / f"{prefix}roc.png"), "ROC curves")
    doc.img(figures.calibration_figure(run, out / f"{prefix}calibration.png"), "calibration")
    doc.img(figures.decision_figure(run, out / f"{prefix}decision_curve.png"), "decision curve")
    doc.img(figures.shap_figure(run, out / f"{prefix}shap.png"), "SHAP summary")
    if "shap_error" in r:
        doc.p(f"SHAP summary not available: {r['shap_error']}")


def _ours(run: TaskRun, what: str) -> str:
    r = run.results
    best = next(m for m in r["models"] if m["label"] == r["best"])
    base = r.get("baseline") or {}
    values = {
        "cv": f"{_f(best['cv_mean'])} ± {_f(best['cv_sd'])} (CV {best['cv_scoring']}, {best['label']})",
        "test_accuracy": f"{_ci(best['test']['accuracy'])} (test part)",
        "test_f1": f"{_ci(best['test']['f1_macro'])} (test part)",
        "baseline_accuracy": _ci(base.get("accuracy")) if base else "no baseline",
        "baseline_gee": f"p = {_p(base['accuracy_gee']['p_value'])}" if base else "no baseline",
        "n_kept": str(len(best["features_kept"])),
        "auc": f"{_ci(best['cv_auc_oof'])} / {_ci(best['test']['auc'])} (CV out-of-fold / test, {best['label']})",
        "gdi": "; ".join(f"{m['label']}: {_f(m['gdi']['value'])} "
                         f"({m['gdi']['zone'] if m['gdi']['interpretable'] else 'not interpretable'})"
                         for m in r["models"]),
    }
    return values[what]


def _published(doc: Doc, rr: RecipeRun) -> None:
    pub = PUBLISHED[rr.recipe.study]
    doc.h(2, "How this compares with the published study")
    doc.p(CAUTION)
    doc.p(pub["citation"] + ".")
    by_task = {run.results["task"]: run for run in rr.tasks}
    rows = []
    for quantity, value, task, what in pub["rows"]:
        ours = "—"
        if task is not None:
            ours = _ours(by_task[task], what) if task in by_task else "task not run on this data"
        rows.append([quantity, value, ours])
    doc.table(["quantity", "published", "this run"], rows)


def write_report(rr: RecipeRun, out: Path, *, data_label: str) -> Path:
    """Write report.md, report.html, results.json and the PNGs into ``out``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    recipe = rr.recipe
    doc = Doc()
    doc.h(1, f"Research report: {recipe.title}")
    doc.p(f"Recipe {recipe.name} ({recipe.source.name}); data: {data_label}. Research use only, not for diagnosis.")
    doc.table(["step", "setting"], [
        ["images", ", ".join(recipe.images) + (f" (LoG sigma {', '.join(f'{s:g}' for s in recipe.log_sigmas_mm)} mm)"
                                               if "log" in recipe.images else "")],
        ["regions", ", ".join(recipe.regions)],
        ["harmonisation", f"ComBat by {recipe.batch_column} (neuroCombat, in-fold)" if recipe.batch_column else "none"],
        ["stability", f"ICC(2,1) >= {recipe.icc_threshold} vs {recipe.second_segmentation}"
         if recipe.icc_threshold else "none"],
        ["selection", f"grid {recipe.grid} (node.training.grid)" if recipe.grid
         else " → ".join(s.describe() for s in recipe.selection) or "none"],
        ["classifiers", ", ".join(c.describe() for c in recipe.classifiers) or f"grid {recipe.grid}"],
        ["validation", f"patient-grouped hold-out ({recipe.test_fraction:.0%}) + {recipe.cv_folds}-fold "
         "patient-grouped CV inside the training part; every fitted step inside the folds"],
    ])
    for name, why in rr.skipped.items():
        doc.p(f"Task {name} skipped: {why}.")
    for i, run in enumerate(rr.tasks, start=1):
        _task_section(doc, run, out, i)
    _published(doc, rr)
    (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(doc.html(recipe.title), encoding="utf-8")
    payload = {"recipe": recipe.name, "data": data_label, "skipped": rr.skipped,
               "tasks": [run.results for run in rr.tasks]}
    text = json.dumps(_finite(payload), indent=1, default=_json_default, allow_nan=False)
    (out / "results.json").write_text(text, encoding="utf-8")
    return html_path


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so that results.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")
