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
from node.errors import ConfigError, MissingSeriesError
from node.imaging.features import FEATURE_NAMES
from node.jobs.model_set import load_model_set
from node.jobs.process import (
    ProcessResult,
    primary_subtype_from_headers,
    process_study,
    write_failure_report,
)
from node.labels import normalise_subtype
from node.model.bundle import BundleError
from node.model.tasks import Task
from node.sr.validate import validate_object, validate_sr
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
    return process_study(synth_case.root, out, models_dir=full_models, primary_subtype="hr+/her2-")


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
    assert len(processed.companion_paths) == len(processed.lesions) == 2  # one Secondary Capture per lesion
    for path in processed.companion_paths:
        assert validate_object(path, ("roundtrip",)) == []
    sr = pydicom.dcmread(processed.sr_path)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == processed.study_instance_uid
    text = sr_text(sr)
    for task in ("subtype", "er", "pr", "her2", "her2-3tier"):
        assert f"model[{task}]=bcbm-{task}" in text
    assert "model[subtype-noprimary]" not in text
    assert "with the primary-tumour subtype (HR+/HER2-)" in text


@pytest.mark.slow  # the imaging pipeline on a real study: ~12 s each on the shared machine
def test_lesion_summaries_are_json_and_carry_every_head(processed: ProcessResult) -> None:
    assert processed.subtype_model == "with-primary"
    lesions = json.loads(json.dumps(processed.lesions))
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
    assert out.count("SEG segment") == 2 and out.count("  ER ") == 2 and out.count("HER2 3-tier") == 2
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


def test_primary_subtype_from_headers(synth_case: SynthCase, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(synth_case.t1ce[0], stop_before_pixels=True)
    assert primary_subtype_from_headers([ds]) == (None, [])
    ds.AdditionalPatientHistory = "Breast cancer 2019. Primary subtype: hr- / her2+ (biopsy)"
    assert primary_subtype_from_headers([ds]) == ("HR-/HER2+", [])
    other = pydicom.dcmread(synth_case.t2[0], stop_before_pixels=True)
    other.PatientComments = "primary-subtype=triple negative"
    value, warnings = primary_subtype_from_headers([ds, other])
    assert value is None and "conflicting" in warnings[0]
    monkeypatch.setenv("AINODE_PRIMARY_SUBTYPE_ATTRIBUTES", "PatientComments")
    assert primary_subtype_from_headers([ds, other]) == ("TN", [])
    monkeypatch.setenv("AINODE_PRIMARY_SUBTYPE_ATTRIBUTES", "NoSuchKeyword")
    with pytest.raises(ConfigError):
        primary_subtype_from_headers([ds])
    assert normalise_subtype(" HR+/HER2+ ") == "HR+/HER2+"




def test_unusable_lesions_are_left_out_with_a_warning(full_models: Path) -> None:
    from node.imaging.pipeline import FeatureRun
    from node.imaging.types import LesionFeatures, StudyIdentity
    from node.jobs.process import predict_lesions

    models = load_model_set(full_models)
    good = {n: 0.0 for n in FEATURE_NAMES}
    lesions = (
        LesionFeatures(1, "qc failed", {n: float("nan") for n in FEATURE_NAMES}, {"error": "lesion too small"}),
        LesionFeatures(2, "nan", {n: float("nan") for n in FEATURE_NAMES}, {"volume_ml": 0.1}),
        LesionFeatures(3, "no volume", good, {}),
        LesionFeatures(4, "fine", good, {"volume_ml": 1.5}),
    )
    run = FeatureRun(case="c", identity=StudyIdentity("1.2", "1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5"),
                     lesions=lesions, pons_method="auto", pons_qc={}, registration_metric=0.0,
                     registration_method="x", timings={})
    subtype, _, _ = models.choose_subtype(None)
    results, summaries, warnings = predict_lesions(run, subtype, models.receptor_bundles, None)
    assert [r.segment_number for r in results] == [4] and summaries[0]["segment_number"] == 4
    assert len(warnings) == 3
    assert "lesion too small" in warnings[0] and "could not be computed" in warnings[1]
    assert "volume" in warnings[2]


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
