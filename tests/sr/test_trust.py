"""Confidence statements, head disagreement, the experimental HER2 three-tier head and provenance in the SR
(re-read and validated) and on the companion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.model.prediction import Prediction
from node.sr import codes as C
from node.sr import trust as T
from node.sr.companion import _result_lines, build_companion_pdf, build_companion_sc, render_pdf
from node.sr.consistency import check_heads
from node.sr.content import (
    AlgorithmInfo,
    HeadResult,
    LesionResult,
    ModelInfo,
    PonsSummary,
    ReportContent,
    SubtypeModel,
    lesion_result_from_predictions,
)
from node.sr.report import build_report, write_instance
from node.sr.source import SourceStudy
from node.sr.validate import validate_object, validate_sr

from .conftest import FEATURES, SHA, SHAP

DEMO = {"training_data": "synthetic", "training_data_statement": "synthetic training data \u2014 demonstration only",
        "validation": "held-out synthetic site site4: accuracy 0.87 (95% CI 0.77-0.95), 95 lesions",
        "created": "2026-11-22T00:00:00Z"}


def _pred(probs: dict[str, float], threshold: float | None = 0.6, **extra: Any) -> Prediction:
    return Prediction(label=max(probs, key=probs.__getitem__), probabilities=probs, shap_contributions=extra or SHAP,
                      shap_base_value=-0.4, shap_units="log-odds margin", out_of_distribution=False,
                      calibrated=threshold is not None, confidence_threshold=threshold)


def _binary(p: float) -> Prediction:
    return _pred({"negative": 1 - p, "positive": p}, threshold=0.7, **{"x": 0.0})


def _lesions() -> tuple[LesionResult, LesionResult]:
    # lesion 1: TN at 0.45 (below 0.6: low confidence) with ER positive -> disagreement; HER2 three-tier run
    tn = _pred({"HR+/HER2-": 0.2, "HR+/HER2+": 0.2, "HR-/HER2+": 0.15, "TN": 0.45})
    one = lesion_result_from_predictions(1, tn, FEATURES, 1.5, er=_binary(0.9), pr=_binary(0.2), her2=_binary(0.1),
                                         her2_tier=_pred({"zero": 0.6, "low": 0.3, "positive": 0.1}, threshold=None,
                                                         **{"x": 0.0}),
                                         primary_subtype="TN", top_k=5)
    # lesion 2: HR+/HER2- at 0.8 with ER positive, HER2 negative -> consistent and confident
    hr = _pred({"HR+/HER2-": 0.8, "HR+/HER2+": 0.1, "HR-/HER2+": 0.05, "TN": 0.05})
    two = lesion_result_from_predictions(2, hr, FEATURES, 0.9, er=_binary(0.95), pr=_binary(0.75), her2=_binary(0.05),
                                         primary_subtype="TN", top_k=5)
    return one, two


@pytest.fixture(scope="module")
def trust_content(source: SourceStudy) -> ReportContent:
    models = tuple(ModelInfo(t, f"bcbm-{t}", "0.1.0", SHA, **DEMO) for t in ("subtype", "er", "pr", "her2",
                                                                            "her2-3tier"))
    return ReportContent(source=source, lesions=_lesions(), algorithm=AlgorithmInfo(models=models),
                         subtype_model=SubtypeModel.WITH_PRIMARY, pons=PonsSummary("auto"), primary_subtype="TN")


@pytest.fixture(scope="module")
def trust_sr(trust_content: ReportContent, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_instance(build_report(trust_content), tmp_path_factory.mktemp("trust"))


def _texts(ds: Dataset) -> list[str]:
    return [i.TextValue for i in ds.ContentSequence[-1].ContentSequence if i.ValueType == "TEXT"]


def _qual(sr_path: Path, content: ReportContent, segment: int) -> dict[str, str]:
    sr: Any = hd.sr.srread(sr_path)
    groups = sr.content.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment)
    uid = content.source.segment(segment).tracking_uid
    for g in groups:
        q = {e.name.value: e.value.value for e in g.get_qualitative_evaluations()}
        if C.PREDICTED_SUBTYPE.value in q and g.tracking_uid == uid:
            return q
    raise AssertionError(f"no classification group for segment {segment}")


def test_consistency_rules():
    one, two = _lesions()
    found = check_heads(one)
    assert [d.heads for d in found] == [("subtype", "er")]
    assert "TN is hormone-receptor negative but ER is predicted positive" in found[0].text
    assert check_heads(two) == ()

    def lesion(subtype: str, **heads: float) -> LesionResult:
        probs = {c: 0.1 for c in ("HR+/HER2-", "HR+/HER2+", "HR-/HER2+", "TN")}
        probs[subtype] = 0.7
        made: dict[str, Any] = {k: HeadResult.from_prediction(k, _binary(p)) for k, p in heads.items()}
        return LesionResult(1, HeadResult("subtype", subtype, probs), 1.0, **made)

    assert [d.heads for d in check_heads(lesion("HR+/HER2+", her2=0.1))] == [("subtype", "her2")]
    assert [d.heads for d in check_heads(lesion("HR+/HER2-", er=0.1, pr=0.2))] == [("subtype", "er")]
    assert check_heads(lesion("HR+/HER2-", er=0.1)) == ()  # PR not run: ER-negative HR+ is possible (PR+)
    assert [d.heads for d in check_heads(lesion("TN", pr=0.8, her2=0.9))] == [("subtype", "pr"), ("subtype", "her2")]
    tier = HeadResult("her2-3tier", "positive", {"zero": 0.1, "low": 0.1, "positive": 0.8})
    base = lesion("HR+/HER2-", her2=0.1)
    mixed = LesionResult(1, base.subtype, 1.0, her2=base.her2, her2_tier=tier)
    assert [d.heads for d in check_heads(mixed)] == [("subtype", "her2-3tier"), ("her2", "her2-3tier")]


def test_sr_carries_confidence_disagreement_experimental_and_provenance(trust_sr: Path,
                                                                      trust_content: ReportContent):
    assert validate_sr(trust_sr) == []  # re-read, dsrdump, dciodvfy, PixelMed, TID 1500 reader
    one, two = _qual(trust_sr, trust_content, 1), _qual(trust_sr, trust_content, 2)
    assert one[T.CONFIDENCE["subtype"].value] == T.LOW_CONFIDENCE.value  # 0.45 < 0.6
    assert one[T.CONFIDENCE["er"].value] == T.NOT_LOW_CONFIDENCE.value  # 0.9 >= 0.7
    assert one[T.CONFIDENCE["pr"].value] == T.NOT_LOW_CONFIDENCE.value  # 0.8 (negative) >= 0.7
    assert T.CONFIDENCE["her2-3tier"].value not in one  # no rule in that bundle: no coded statement
    assert one[T.HEADS_CONSISTENT.value] == C.NO.value
    assert one[T.EXPERIMENTAL_HEAD.value] == T.HER2_3TIER_EXPERIMENTAL.value
    assert two[T.CONFIDENCE["subtype"].value] == T.NOT_LOW_CONFIDENCE.value
    assert two[T.HEADS_CONSISTENT.value] == C.YES.value
    assert T.EXPERIMENTAL_HEAD.value not in two
    ds = pydicom.dcmread(trust_sr)
    container = ds.ContentSequence[-1]
    codes_in = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
                for i in container.ContentSequence if i.ValueType == "CODE"]
    assert codes_in == [(T.TRAINING_DATA.value, T.TRAINING_DATA_CODES["synthetic"].value)]
    text = "\n".join(_texts(ds))
    assert "DEMONSTRATION MODELS: trained on synthetic data" in text
    assert ("Model subtype: bcbm-subtype 0.1.0, created 2026-11-22T00:00:00Z; synthetic training data \u2014 "
            "demonstration only; validation: held-out synthetic site site4: accuracy 0.87") in text
    assert ("Segment 1 confidence: subtype TN p=0.45 LOW CONFIDENCE (below 0.60, the model's cross-validated "
            "threshold)") in text
    assert "HEADS DISAGREE: subtype TN is hormone-receptor negative but ER is predicted positive" in text
    assert "EXPERIMENTAL: the HER2 three-tier method was developed on primary breast tumours" in text
    assert "HER2 3-tier zero p=0.60 (not calibrated: read as a score), no confidence rule" in text
    assert "Segment 2 confidence: subtype HR+/HER2- p=0.80 (at or above the cross-validated threshold 0.60)" in text
    assert "Segment 2" in text and "the heads agree" in text


def test_companion_says_it_in_words(trust_content: ReportContent, tmp_path: Path):
    one, two = trust_content.lesions
    lines = _result_lines(trust_content, one)
    assert ("   subtype LOW (0.45 < 0.60) | ER ok (0.90 >= 0.70) | PR ok (0.80 >= 0.70) | HER2 ok (0.90 >= 0.70) | "
            "HER2 3-tier: no rule (not calibrated)") in lines
    assert any(line.startswith("WARNING - low confidence in the predicted subtype") for line in lines)
    assert "WARNING - heads disagree: subtype TN is hormone-receptor negative but ER is predicted positive" in lines
    assert "WARNING - DEMONSTRATION MODELS: synthetic training data \u2014 demonstration only" in lines
    assert "Model: bcbm-subtype 0.1.0 (2026-11-22); synthetic training data \u2014 demonstration only" in lines
    assert any(line.startswith("Validation: held-out synthetic site site4") for line in lines)
    assert any(line.startswith("EXPERIMENTAL") for line in lines)
    assert not any("disagree" in line or "low confidence" in line for line in _result_lines(trust_content, two))
    for ds in (*build_companion_sc(trust_content), build_companion_pdf(trust_content)):
        assert validate_object(write_instance(ds, tmp_path)) == []
    assert render_pdf(trust_content).startswith(b"%PDF")


def test_models_without_provenance_say_so(source: SourceStudy, tmp_path: Path):
    lesion = LesionResult(1, HeadResult("subtype", "TN", {"HR+/HER2-": 0.1, "HR+/HER2+": 0.1, "HR-/HER2+": 0.1,
                                                          "TN": 0.7}), 1.0)
    content = ReportContent(source=source, lesions=(lesion,),
                            algorithm=AlgorithmInfo(models=(ModelInfo("subtype-noprimary", "old", "0.0.1", SHA),)),
                            subtype_model=SubtypeModel.WITHOUT_PRIMARY, pons=PonsSummary("auto"))
    path = write_instance(build_report(content), tmp_path)
    assert validate_sr(path, checks=("roundtrip", "dsrdump", "dciodvfy")) == []
    text = "\n".join(_texts(pydicom.dcmread(path)))
    assert "training data not stated; validation: validation performance not stated" in text
    assert "subtype TN p=0.70 (not calibrated: read as a score), no confidence rule" in text
    assert "DEMONSTRATION" not in text


def test_private_codes_fit_and_are_unique():
    values = [c.value for c in T.all_codes()] + [c.value for c in C.all_private_codes()]
    assert len(values) == len(set(values))
