"""process_study / write_failure_report / ``ainode analyse`` on a real small synthetic study with tiny real
model bundles (node.learn, trained on the pipeline's 200 FEATURE_NAMES); outputs validated by the SR checks."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node import cli
from node.cli import analyse as analyse_command
from node.config import Settings
from node.errors import ConfigError, MissingSeriesError
from node.imaging.features import FEATURE_NAMES
from node.imaging.pipeline import FeatureRun
from node.imaging.types import LesionFeatures, StudyIdentity
from node.jobs.lesions import HeadSummary, LesionSummary
from node.jobs.model_set import load_model_set
from node.jobs.primary import (
    DEFAULT_PRIMARY_ATTRIBUTES,
    primary_subtype_from_headers,
)
from node.jobs.process import ProcessResult, process_study, write_failure_report
from node.jobs.steps import choose_models, predict_lesions
from node.jobs.summary import result_json
from node.labels import normalise_subtype
from node.model.bundle import BundleError
from node.model.prediction import Prediction
from node.model.tasks import Task
from node.sr.consistency import check_heads
from node.sr.validate import validate_object, validate_sr
from node.vocabulary import NotAssessedReason
from tests.support.studies import SynthCase, synth_case

__all__ = ["synth_case"]


@pytest.fixture(scope="module")
def full_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every task's bundle (subtype with and without the primary, ER, PR, HER2, HER2 3-tier), tiny xgboost."""
    from tests.model_factory import train_tiny_bundles

    return train_tiny_bundles(tmp_path_factory.mktemp("process-models"), Task, k=8, learning_rate=0.3)


@pytest.fixture(scope="module")
def processed(synth_case: SynthCase, full_models: Path, tmp_path_factory: pytest.TempPathFactory) -> ProcessResult:
    out = tmp_path_factory.mktemp("process-out")
    # the experimental HER2 three-tier head is off by default; enabled here so every head is exercised
    return process_study(synth_case.root, out, models_dir=full_models, primary_subtype="hr+/her2-",
                         her2_three_tier=True)


def sr_text(ds: Dataset) -> str:
    """Every TEXT / UIDREF / code meaning value in the SR content tree, one per line."""
    lines = []
    for item in ds.get("ContentSequence", []):
        for keyword in ("TextValue", "UID"):
            if keyword in item:
                lines.append(str(item.get(keyword)))
        for code in item.get("ConceptCodeSequence", []):
            lines.append(str(code.CodeMeaning))
        lines.append(sr_text(item))
    return "\n".join(line for line in lines if line)


@pytest.mark.slow  # the imaging pipeline on a real study: ~12 s each on the shared machine
def test_result_objects_are_written_valid_and_complete(processed: ProcessResult, full_models: Path) -> None:
    out = processed.sr_path.parent
    assert sorted(out.iterdir()) == sorted(processed.paths)  # no staging or rejected folders left
    assert validate_sr(processed.sr_path, ("roundtrip", "dsrdump")) == []
    # one Secondary Capture per lesion, then the QC key image (tests/jobs/test_qc_key_image.py)
    assert len(processed.companion_paths) == len(processed.lesions) + 1 == 3
    for path in processed.companion_paths:
        assert validate_object(path, ("roundtrip",)) == []
    sr = pydicom.dcmread(processed.sr_path)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == processed.study_instance_uid
    text = sr_text(sr)
    for task in ("subtype", "er", "pr", "her2", "her2-3tier"):
        assert f"model[{task}]=bcbm-{task}" in text
    assert "model[subtype-noprimary]" not in text
    assert "EXPERIMENTAL: the HER2 three-tier method was developed on primary breast tumours" in text
    assert "Segment 1 confidence: subtype " in text and "Model subtype: bcbm-subtype" in text
    assert "with the primary-tumour subtype (HR+/HER2-)" in text


@pytest.mark.slow  # the imaging pipeline on a real study: ~12 s each on the shared machine
def test_lesion_summaries_are_json_and_carry_every_head(processed: ProcessResult) -> None:
    assert processed.subtype_model == "with-primary"
    assert all(isinstance(lesion, LesionSummary) for lesion in processed.lesions)
    lesions = json.loads(json.dumps(result_json(processed)))["lesions"]
    assert [LesionSummary.from_json(lesion) for lesion in lesions] == list(processed.lesions)
    assert [lesion["segment_number"] for lesion in lesions] == [1, 2]
    for lesion in lesions:
        assert lesion["subtype"] in ("HR+/HER2-", "HR+/HER2+", "HR-/HER2+", "TN")
        assert abs(sum(lesion["probabilities"].values()) - 1) < 1e-3
        assert set(lesion["heads"]) == {"er", "pr", "her2", "her2-3tier"}
        assert len(lesion["top_features"]) == 5 and lesion["volume_ml"] > 0
        # the tiny models were trained on standardised synthetic values: a real study is far outside them
        assert lesion["out_of_distribution"] and lesion["ood_reasons"]
    assert processed.timings["total"] >= processed.timings["pipeline.total"] > 0


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``ainode ...`` through the real node.cli.main, with ``analyse`` registered if cli.py does not yet."""
    original = cli.build_parser

    def build() -> argparse.ArgumentParser:
        parser = original()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and "analyse" not in action.choices:
                analyse_command.register(action)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    return cli.main(argv)


@pytest.mark.slow  # the imaging pipeline on a real study: ~12 s each on the shared machine
def test_analyse_without_primary_prints_what_the_radiologist_sees(
    synth_case: SynthCase, full_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = run_cli(["analyse", str(synth_case.root), "--out", str(tmp_path / "out"), "--models",
                      str(full_models), "--companions", "none"], monkeypatch)
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.startswith("AI prediction - Research use only, not for diagnosis.")
    assert "subtype model without the primary-tumour subtype" in out
    # two lesion blocks and the patient-level line that names the index lesion (node.jobs.index)
    assert out.count("SEG segment") == 3 and out.count("  ER ") == 2
    assert "\nPatient-level predicted subtype: " in out and out.count("- INDEX LESION") == 1
    assert "HER2 3-tier" not in out  # the experimental head is off by default (AINODE_HER2_THREE_TIER)
    assert "top features" in out and "outside the training distribution" in out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 1 and written[0].startswith("SR_")  # --companions none: the SR only
    assert "model[subtype-noprimary]" in sr_text(pydicom.dcmread(tmp_path / "out" / written[0]))


def test_bad_study_exits_2_with_one_line_and_a_failure_sr(
    synth_case: SynthCase, full_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = tmp_path / "study"
    shutil.copytree(synth_case.root, study)
    shutil.rmtree(study / "t2")
    out = tmp_path / "out"
    status = run_cli(["analyse", str(study), "--out", str(out), "--models", str(full_models)], monkeypatch)
    captured = capsys.readouterr()
    assert status == 2
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("ainode analyse: error: ")
    assert "T2" in captured.err
    (failure,) = out.iterdir()
    assert captured.out.strip() == f"not processed; failure report written: {failure}"
    assert validate_sr(failure, ("roundtrip", "dsrdump")) == []
    sr = pydicom.dcmread(failure)
    assert sr.StudyInstanceUID == pydicom.dcmread(synth_case.t1ce[0]).StudyInstanceUID
    assert "not processed" in sr.SeriesDescription


def test_failure_report_needs_a_readable_instance(tmp_path: Path, full_models: Path) -> None:
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "junk.dcm").write_bytes(b"junk")
    error = MissingSeriesError("no T1CE")
    assert write_failure_report(tmp_path / "study", tmp_path / "out", error, models_dir=full_models) is None
    assert write_failure_report(tmp_path / "absent", tmp_path / "out", error, models_dir=full_models) is None


def test_configuration_problems_fail_before_the_pipeline(synth_case: SynthCase, tmp_path: Path,
                                                         full_models: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        process_study(synth_case.root, tmp_path, models_dir=tmp_path / "nothing")
    with pytest.raises(ConfigError, match="companion"):
        process_study(synth_case.root, tmp_path, models_dir=full_models, companions=("movie",))
    with pytest.raises(ConfigError, match="unknown primary subtype"):
        process_study(synth_case.root, tmp_path, models_dir=full_models, primary_subtype="luminal")
    with pytest.raises(ConfigError, match=r"primary_attributes names unknown DICOM keyword.*: NoSuchKeyword"):
        process_study(synth_case.root, tmp_path, models_dir=full_models, primary_attributes=("NoSuchKeyword",))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_model_set_choice_and_integrity(full_models: Path, tmp_path: Path) -> None:
    models = load_model_set(full_models)
    assert set(models.bundles) == set(Task)
    assert models.choose_subtype("TN")[1].value == "subtype"
    assert models.choose_subtype(None)[1].value == "subtype-noprimary"
    only_noprimary = tmp_path / "m1"
    shutil.copytree(full_models / "subtype-noprimary", only_noprimary / "subtype-noprimary")
    _, variant, warnings = load_model_set(only_noprimary).choose_subtype("TN")
    assert variant.value == "subtype-noprimary" and "no 'subtype' model" in warnings[0]
    assert load_model_set(only_noprimary).receptor_bundles == {}
    tampered = tmp_path / "m2"
    shutil.copytree(full_models, tampered)
    with (tampered / "er" / "preprocess.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match="SHA-256"):
        load_model_set(tampered)
    with pytest.raises(BundleError, match="radiomics parameter file"):
        load_model_set(full_models, radiomics_sha256="0" * 64)
    receptors_only = tmp_path / "m3"
    shutil.copytree(full_models / "er", receptors_only / "er")
    with pytest.raises(BundleError, match="no subtype model"):
        load_model_set(receptors_only)


def test_primary_subtype_from_headers(synth_case: SynthCase) -> None:
    ds = pydicom.dcmread(synth_case.t1ce[0], stop_before_pixels=True)
    assert primary_subtype_from_headers([ds]) == (None, [])
    ds.AdditionalPatientHistory = "Breast cancer 2019. Primary subtype: hr- / her2+ (biopsy)"
    assert primary_subtype_from_headers([ds]) == ("HR-/HER2+", [])
    other = pydicom.dcmread(synth_case.t2[0], stop_before_pixels=True)
    other.PatientComments = "primary-subtype=triple negative"
    value, warnings = primary_subtype_from_headers([ds, other])
    assert value is None and "conflicting" in warnings[0]
    assert primary_subtype_from_headers([ds, other], ("PatientComments",)) == ("TN", [])
    attributes = Settings.load(env={"AINODE_PRIMARY_SUBTYPE_ATTRIBUTES": "PatientComments"}).primary_subtype_attributes
    assert primary_subtype_from_headers([ds, other], attributes) == ("TN", [])
    with pytest.raises(ConfigError, match="AINODE_PRIMARY_SUBTYPE_ATTRIBUTES"):
        Settings.load(env={"AINODE_PRIMARY_SUBTYPE_ATTRIBUTES": "NoSuchKeyword"})
    assert normalise_subtype(" HR+/HER2+ ") == "HR+/HER2+"


def test_primary_attributes_are_parsed_and_checked() -> None:
    assert Settings.load(env={}).primary_subtype_attributes == DEFAULT_PRIMARY_ATTRIBUTES
    parsed = Settings.load(env={"AINODE_PRIMARY_SUBTYPE_ATTRIBUTES": " PatientComments, StudyComments "})
    assert parsed.primary_subtype_attributes == ("PatientComments", "StudyComments")
    with pytest.raises(ConfigError, match="AINODE_PRIMARY_SUBTYPE_ATTRIBUTES: unknown DICOM keyword"
                                          r"\(s\): NoSuchKeyword, Other"):
        Settings.load(env={"AINODE_PRIMARY_SUBTYPE_ATTRIBUTES": "PatientComments,NoSuchKeyword,Other"})


def _feature_run(*lesions: LesionFeatures) -> FeatureRun:
    return FeatureRun(case="c", identity=StudyIdentity("1.2", "1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5"),
                      lesions=lesions, pons_method="auto", pons_qc={}, registration_metric=0.0,
                      registration_method="x", timings={})


def _old_lesion_json(lesion: LesionFeatures, volume_ml: float, subtype: Prediction,
                     heads: dict[str, Prediction]) -> dict[str, object]:
    """The per-lesion dict process_study built by hand from the predictions before LesionSummary existed."""

    def head(p: Prediction) -> dict[str, object]:
        return {"label": p.label, "probability": round(p.probability, 4),
                "probabilities": {k: round(float(v), 4) for k, v in p.probabilities.items()},
                "out_of_distribution": p.out_of_distribution}

    reasons = list(dict.fromkeys(r for p in (subtype, *heads.values()) for r in p.ood_reasons))
    return {
        "segment_number": lesion.segment_number, "label": lesion.label, "volume_ml": round(volume_ml, 3),
        "subtype": subtype.label, "probability": round(subtype.probability, 4),
        "probabilities": {k: round(float(v), 4) for k, v in subtype.probabilities.items()},
        "heads": {task: head(p) for task, p in heads.items()},
        "top_features": [[name, round(value, 4)] for name, value in subtype.top_features(5)],
        "shap_units": subtype.shap_units,
        "out_of_distribution": bool(reasons) or subtype.out_of_distribution
        or any(p.out_of_distribution for p in heads.values()),
        "ood_reasons": reasons,
        "index": False,  # added with the index lesion (node.jobs.index); set by process_study, not here
        "site": "",  # no atlas site without a study (node.imaging.sites)
        "cautions": [],  # filled in by the test from the SR result (low confidence, disagreeing heads)
    }


@pytest.mark.parametrize("primary", [None, "TN"])
def test_lesion_summary_is_derived_from_the_sr_result_with_the_json_shape_of_before(
    full_models: Path, primary: str | None
) -> None:
    models = choose_models(load_model_set(full_models), primary, her2_three_tier=True)
    features = {n: 0.1 * (i % 7) - 0.2 for i, n in enumerate(FEATURE_NAMES)}
    lesion = LesionFeatures(3, "Metastasis 3", features, {"volume_ml": 2.34567})
    predictions = predict_lesions(_feature_run(lesion), models, primary)
    (result,), (summary,) = predictions.results, predictions.summaries
    assert summary == LesionSummary.from_result(result, "Metastasis 3")  # derived, not built a second time
    expected = _old_lesion_json(
        lesion, 2.34567, models.subtype.predict(features, primary),
        {task.value: bundle.predict(features, primary) for task, bundle in models.receptors.items()},
    )
    # the cautions say, in words, what the SR codes: each head under its CV threshold, each contradiction
    low = [h for h in result.heads if h.confidence_threshold is not None and h.probability < h.confidence_threshold]
    assert [c for c in summary.cautions if c.startswith("low confidence: ")] == [
        f"low confidence: {h.task} {h.probability:.2f} < {h.confidence_threshold:.2f}" for h in low]
    assert len(summary.cautions) == len(low) + len(check_heads(result))
    expected["cautions"] = list(summary.cautions)
    assert summary.to_json() == expected
    assert json.dumps(summary.to_json()) == json.dumps(expected)  # key order too
    assert LesionSummary.from_json(expected) == summary
    assert list(summary.heads) == ["er", "pr", "her2", "her2-3tier"]
    assert summary.top_features == tuple((c.feature, round(c.contribution, 4))
                                         for c in result.explanation.contributions[:5])  # type: ignore[union-attr]


def test_console_summary_and_json_of_typed_lesions(tmp_path: Path) -> None:
    er = HeadSummary("positive", 0.8, {"negative": 0.2, "positive": 0.8})
    first = LesionSummary(1, "Metastasis 1", 2.5, "HR+/HER2-", 0.7149, {"HR+/HER2-": 0.7149, "TN": 0.2851},
                          {"er": er}, (("t1ce_firstorder_Mean", 0.4214), ("t2_glcm_Contrast", -0.2)), "log-odds")
    second = LesionSummary(2, "", 0.125, "TN", 0.55, {"HR+/HER2-": 0.45, "TN": 0.55},
                           out_of_distribution=True, ood_reasons=("a", "b", "c", "d"))
    result = ProcessResult("1.2.3", tmp_path / "sr.dcm", (tmp_path / "sc.dcm",), (first, second),
                           "without-primary", ("one warning",), {"total": 12.34})
    assert analyse_command.summary(result).splitlines() == [
        "AI prediction - Research use only, not for diagnosis. Not verified by a physician.",
        "Study 1.2.3: 2 lesion(s); subtype model without the primary-tumour subtype.",
        "",
        "Metastasis 1 (SEG segment 1, 2.50 mL)",
        "  subtype          HR+/HER2-  (p=0.71)",
        "  ER               positive  (p=0.80)",
        "  top features     t1ce_firstorder_Mean +0.42, t2_glcm_Contrast -0.20",
        "",
        "Lesion (SEG segment 2, 0.12 mL)",
        "  subtype          TN  (p=0.55)",
        "  WARNING: outside the training distribution - review with care (a; b; c)",
        "",
        "warning: one warning",
        f"SR: {tmp_path / 'sr.dcm'}",
        f"companion: {tmp_path / 'sc.dcm'}",
        "processed in 12.3 s",
    ]
    lesions = json.loads(json.dumps(result_json(result)))["lesions"]
    assert lesions[0]["heads"] == {"er": {"label": "positive", "probability": 0.8,
                                          "probabilities": {"negative": 0.2, "positive": 0.8},
                                          "out_of_distribution": False}}
    assert lesions[0]["top_features"] == [["t1ce_firstorder_Mean", 0.4214], ["t2_glcm_Contrast", -0.2]]
    assert [LesionSummary.from_json(lesion) for lesion in lesions] == [first, second]


def test_her2_three_tier_head_is_off_unless_enabled(full_models: Path) -> None:
    model_set = load_model_set(full_models)
    assert list(choose_models(model_set, "HR+/HER2-").receptors) == [Task.ER, Task.PR, Task.HER2]
    enabled = choose_models(model_set, "HR+/HER2-", her2_three_tier=True)
    assert list(enabled.receptors) == [Task.ER, Task.PR, Task.HER2, Task.HER2_3TIER]
    assert "her2-3tier" in {m.task for m in enabled.algorithm.models}


def test_unusable_lesions_are_not_assessed_with_a_reason(full_models: Path) -> None:
    models = choose_models(load_model_set(full_models), None)
    good = {n: 0.0 for n in FEATURE_NAMES}
    lesions = (
        LesionFeatures(1, "qc failed", {n: float("nan") for n in FEATURE_NAMES}, {"error": "lesion too small"}),
        LesionFeatures(2, "nan", {n: float("nan") for n in FEATURE_NAMES}, {"volume_ml": 0.1}),
        LesionFeatures(3, "no volume", good, {}),
        LesionFeatures(4, "fine", good, {"volume_ml": 1.5}),
    )
    predictions = predict_lesions(_feature_run(*lesions), models, None)
    assert [r.segment_number for r in predictions.results] == [4]
    assert [(s.segment_number, s.label) for s in predictions.summaries] == [(4, "fine")]
    assert predictions.warnings == ()
    refused = predictions.not_assessed
    assert [(n.segment_number, n.label, n.reason) for n in refused] == [
        (1, "qc failed", NotAssessedReason.FEATURES_FAILED),
        (2, "nan", NotAssessedReason.MODEL_REFUSED),
        (3, "no volume", NotAssessedReason.FEATURES_FAILED),
    ]
    assert "lesion too small" in refused[0].text and "could not be computed" in refused[1].text
    assert "volume" in refused[2].text and refused[1].volume_ml == 0.1 and refused[2].volume_ml is None
    # no lesion left is not an error: the report says that none was assessed (node.jobs.scope)
    none_left = predict_lesions(_feature_run(*lesions[:3]), models, None)
    assert none_left.results == () and len(none_left.not_assessed) == 3


@pytest.mark.slow  # the imaging pipeline on a real study
def test_primary_subtype_set_beforehand_selects_the_model_and_is_reported(
    synth_case: SynthCase, full_models: Path, tmp_path: Path
) -> None:
    asked: list[tuple[str, str | None, str | None]] = []

    def lookup(study_uid: str, accession: str | None, patient_id: str | None) -> tuple[str, str] | None:
        asked.append((study_uid, accession, patient_id))
        return ("tn", "set with 'ainode primary' for the patient")

    result = process_study(synth_case.root, tmp_path, models_dir=full_models, primary_lookup=lookup,
                           companions=())
    first = pydicom.dcmread(next(synth_case.root.rglob("*.dcm")), stop_before_pixels=True)
    assert asked == [(first.StudyInstanceUID, str(first.AccessionNumber) or None, str(first.PatientID))]
    assert result.subtype_model == "with-primary"
    assert result.primary_source == "set with 'ainode primary' for the patient"
    text = sr_text(pydicom.dcmread(result.sr_path))
    assert "with the primary-tumour subtype (TN)" in text and "model[subtype]" in text
