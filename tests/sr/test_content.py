"""Value objects refuse inconsistent input (strict on encode) and read the source headers from real files."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.errors import MissingSeriesError, SegmentationError
from node.sr.content import (
    HeadResult,
    LesionResult,
    ModelInfo,
    PonsSummary,
    ReportContent,
    ShapContribution,
    ShapExplanation,
    SubtypeModel,
    lesion_result_from_predictions,
)
from node.sr.source import SourceStudy

from .conftest import FEATURES, algorithm, binary, lesions, subtype_prediction


def test_source_study_reads_identity_and_segments(source: SourceStudy, study_dir: Path):
    seg = pydicom.dcmread(study_dir / "seg" / "seg.dcm", stop_before_pixels=True)
    assert source.study_instance_uid == seg.StudyInstanceUID
    assert len(source.t1ce) == len(list((study_dir / "t1ce").glob("*.dcm")))
    assert [s.segment_number for s in source.segments] == [1, 2]
    assert source.segment(1).tracking_uid == seg.SegmentSequence[0].TrackingUID
    assert source.segmentation_source_series_uid == source.t1ce_series_uid
    assert "PixelData" not in source.t1ce[0]  # headers only
    with pytest.raises(SegmentationError):
        source.segment(7)


def test_source_study_refuses_mixed_studies(source: SourceStudy):
    # a deep copy: Dataset.update shares the DataElements, so setting the copy's StudyInstanceUID would change
    # the session-wide source's header too (it did: the SR built after this test lost an instance of its evidence)
    study = source.t2[0].StudyInstanceUID
    other = copy.deepcopy(source.t2[0])
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(SegmentationError, match="one study"):
        dataclasses.replace(source, t2=(*source.t2[1:], other))
    with pytest.raises(MissingSeriesError):
        dataclasses.replace(source, t2=())
    assert source.t2[0].StudyInstanceUID == study


@pytest.mark.parametrize(
    ("task", "label", "probs", "message"),
    [
        ("subtype", "TN", {"HR+/HER2-": 0.5, "HR+/HER2+": 0.5, "HR-/HER2+": 0.5, "TN": 0.5}, "sum"),
        ("subtype", "HR+", {"HR+/HER2-": 0.25, "HR+/HER2+": 0.25, "HR-/HER2+": 0.25, "TN": 0.25}, "label"),
        ("er", "positive", {"positive": 1.0}, "cover"),
        ("er", "positive", {"negative": -0.2, "positive": 1.2}, r"\[0, 1\]"),
        ("ki67", "high", {"high": 1.0}, "unknown head"),
    ],
)
def test_head_result_validation(task, label, probs, message):
    with pytest.raises(ValueError, match=message):
        HeadResult(task=task, label=label, probabilities=probs)


def test_lesion_result_from_predictions_takes_top_k_with_values():
    lesion = lesion_result_from_predictions(1, subtype_prediction(), FEATURES, 1.0, er=binary(0.9), top_k=3,
                                            primary_subtype="HR-/HER2+")
    assert lesion.explanation is not None
    got = [(c.feature, c.value) for c in lesion.explanation.contributions]
    assert got == [("primary_subtype=HR-/HER2+", 1.0), ("t1ce_glcm_JointEntropy", 5.12),
                   ("t2_firstorder_Median", 0.31)]
    assert lesion.er is not None and lesion.er.label == "positive"
    with pytest.raises(ValueError, match="lack"):
        lesion_result_from_predictions(1, subtype_prediction(), {}, 1.0)


def test_lesion_result_refuses_wrong_slots_and_volumes():
    subtype = HeadResult.from_prediction("subtype", subtype_prediction())
    with pytest.raises(ValueError, match="slot"):
        LesionResult(1, subtype, 1.0, er=HeadResult.from_prediction("pr", binary(0.2)))
    with pytest.raises(ValueError, match="volume"):
        LesionResult(1, subtype, 0.0)
    explanation = ShapExplanation("TN", 0.0, "log-odds", (ShapContribution("shape_Sphericity", 0.8, 0.1),))
    with pytest.raises(ValueError, match="predicted subtype"):
        LesionResult(1, subtype, 1.0, explanation=explanation)


def test_report_content_consistency(source: SourceStudy):
    ok: dict[str, Any] = dict(source=source, lesions=lesions(), algorithm=algorithm(),
                              subtype_model=SubtypeModel.WITH_PRIMARY, pons=PonsSummary("seg"), primary_subtype="TN")
    ReportContent(**ok)
    with pytest.raises(ValueError, match="primary subtype"):
        ReportContent(**{**ok, "primary_subtype": None})
    with pytest.raises(ValueError, match="subtype-noprimary"):
        ReportContent(**{**ok, "subtype_model": SubtypeModel.WITHOUT_PRIMARY})
    with pytest.raises(ValueError, match="no er model"):
        ReportContent(**{**ok, "algorithm": algorithm(("subtype",))})
    with pytest.raises(ValueError, match="research use only"):
        ReportContent(**{**ok, "disclaimer": "for diagnosis"})
    with pytest.raises(SegmentationError):
        bad = dataclasses.replace(lesions()[0], segment_number=9)
        ReportContent(**{**ok, "lesions": (bad,)})
    with pytest.raises(ValueError, match="once"):
        ReportContent(**{**ok, "lesions": (lesions()[0], lesions()[0])})


def test_model_info_validates_hash():
    with pytest.raises(ValueError, match="sha256"):
        ModelInfo("subtype", "m", "1", "xyz")


def test_float32_round_off_is_clipped_and_nan_values_refused():
    p = subtype_prediction()
    probs = dict(p.probabilities)
    probs["HR-/HER2+"] = 1.0000001
    probs["TN"] = -1e-8
    probs["HR+/HER2-"] = probs["HR+/HER2+"] = 0.0
    rough = dataclasses.replace(p, probabilities=probs)
    head = HeadResult.from_prediction("subtype", rough)
    assert head.probabilities["HR-/HER2+"] == 1.0 and head.probabilities["TN"] == 0.0
    with pytest.raises(ValueError, match="invalid SHAP"):
        ShapContribution("shape_Sphericity", float("nan"), 0.1)
