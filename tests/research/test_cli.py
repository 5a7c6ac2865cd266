"""``ainode research run`` end to end: the synthetic research cohort and a tiny folder in the BCBM importer's
output format (features.csv with the T1CE feature names, labels.csv without primary subtype or HER2 tiers)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from node.cli import main
from node.datasets.bcbm.clinical import LABEL_COLUMNS
from node.datasets.bcbm.features import T1CE_FEATURES
from node.imaging.table import QC_COLUMNS
from node.research.synthetic import write_cohort


def test_shell_recipe_on_the_synthetic_cohort_writes_the_whole_report(tmp_path: Path) -> None:
    data = write_cohort(tmp_path / "data", n_patients=80, n_noise=4, seed=1, signal=2.0).folder
    out = tmp_path / "report"
    code = main(["research", "run", "--recipe", "peritumoral-shells", "--data", str(data), "--out", str(out),
                 "--bootstrap", "100", "--nested"])
    assert code == 0
    md = (out / "report.md").read_text()
    for section in ("### Cohort", "### Features kept", "CV AUC (out-of-fold)", "### Operating points",
                    "intratumoral+shells vs intratumoral", "### Nested CV", "How this compares with the published",
                    "Caution: the published numbers come from another cohort"):
        assert section in md, section
    html = (out / "report.html").read_text()
    assert "<table>" in html and 'src="task1_roc.png"' in html
    for png in ("task1_roc.png", "task1_calibration.png", "task1_decision_curve.png", "task1_shap.png"):
        assert (out / png).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    models = results["tasks"][0]["models"]
    assert {m["feature_set"] for m in models} == {"intratumoral", "intratumoral+shells"}
    shells = next(m for m in models if m["feature_set"] == "intratumoral+shells")
    assert any("shell" in name for name in shells["features_kept"])  # the planted shell feature is found


def _bcbm_folder(folder: Path, n_patients: int = 40) -> Path:
    """The importer's output format: QC columns + T1CE features; labels with receptors and site only."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    names = list(T1CE_FEATURES[:12])
    with (folder / "features.csv").open("w", newline="") as fh, (folder / "labels.csv").open("w", newline="") as lh:
        fw = csv.DictWriter(fh, fieldnames=[*QC_COLUMNS, *names])
        lw = csv.DictWriter(lh, fieldnames=list(LABEL_COLUMNS))
        fw.writeheader()
        lw.writeheader()
        for p in range(n_patients):
            er, pr, her2 = int(rng.random() < 0.6), int(rng.random() < 0.5), p % 2
            for scan in (1, 2):
                row: dict[str, object] = dict.fromkeys(QC_COLUMNS, "")
                row.update(case=f"BCBM-RadioGenomics-{p}", study_instance_uid=f"scan{p}-{scan}",
                           segment_number=1000 * scan + 1, segment_label="lesion")
                row.update({n: float(rng.normal() + (1.5 * her2 if i == 0 else 0.0)) for i, n in enumerate(names)})
                fw.writerow(row)
                lw.writerow({"patient": f"BCBM-RadioGenomics-{p}", "lesion": 1000 * scan + 1,
                             "site": f"site-{p % 2}", "metastasis_subtype": "", "primary_subtype": "",
                             "er": er, "pr": pr, "her2": her2, "her2_ihc": "", "her2_ish": "", "her2_3tier": ""})
    return folder


def test_recipes_on_the_bcbm_importer_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _bcbm_folder(tmp_path / "bcbm")
    out = tmp_path / "shells"
    assert main(["research", "run", "--recipe", "peritumoral-shells", "--data", str(data), "--out", str(out),
                 "--bootstrap", "100"]) == 0
    md = (out / "report.md").read_text()
    assert "Missing from the table for feature set intratumoral+shells: shell1mm region features" in md
    yonsei = tmp_path / "yonsei"
    assert main(["research", "run", "--data", str(data), "--out", str(yonsei), "--grid", "tiny",
                 "--bootstrap", "100"]) == 0
    md = (yonsei / "report.md").read_text()
    assert "Task subtype skipped" in md and "## Task subtype-noprimary" in md
    capsys.readouterr()
    # BCBM-RadioGenomics has no HER2 IHC score: the three-tier recipe refuses clearly, exit status 2
    assert main(["research", "run", "--recipe", "her2-three-tier", "--data", str(data), "--out",
                 str(tmp_path / "her2"), "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err
    assert "no task could run" in err and "her2-positive-vs-negative" in err
