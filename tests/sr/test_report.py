"""The written SR, re-read with pydicom/highdicom: identity, header, evidence and the per-lesion content tree."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.sr import codes as C
from node.sr.content import HeadResult, LesionResult, PonsSummary, ReportContent, SubtypeModel
from node.sr.report import SrSopClass, build_report, write_instance
from node.sr.source import SourceStudy
from node.sr.validate import validate_sr
from node.vocabulary import DISCLAIMER

from .conftest import SHA, Written, algorithm, subtype_prediction

PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _groups(sr: Any) -> list[Any]:
    return list(sr.content.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment))


def _mods(m: Any) -> dict[str, str]:
    return {c.ConceptNameCodeSequence[0].CodeValue: c.ConceptCodeSequence[0].CodeValue
            for c in getattr(m[0], "ContentSequence", []) if c.RelationshipType == "HAS CONCEPT MOD"}


def _texts(ds: Dataset) -> list[str]:
    out = []
    for item in ds.ContentSequence:
        if item.ValueType == "TEXT":
            out.append(item.TextValue)
        if "ContentSequence" in item:
            out += _texts(item)
    return out


def test_header_identity_and_new_uids(written: Written, content: ReportContent):
    ds = pydicom.dcmread(written.sr)
    ref = content.source.t1ce[0]
    for keyword in PATIENT_STUDY:
        assert ds.get(keyword) == ref.get(keyword), keyword
    source_uids = {d.SeriesInstanceUID for d in content.source.evidence}
    assert ds.SeriesInstanceUID not in source_uids
    assert ds.SOPInstanceUID not in {d.SOPInstanceUID for d in content.source.evidence}
    assert ds.SOPClassUID == SrSopClass.COMPREHENSIVE_3D
    assert (ds.VerificationFlag, ds.PreliminaryFlag, ds.CompletionFlag) == ("UNVERIFIED", "PRELIMINARY", "COMPLETE")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert "research" in ds.SeriesDescription.lower()
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99BCMETS"
    evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {d.SOPInstanceUID for d in content.source.evidence}


def test_every_container_is_separate(written: Written):
    ds = pydicom.dcmread(written.sr)

    def walk(item: Dataset) -> Iterator[str]:
        if item.get("ValueType") == "CONTAINER":
            yield item.ContinuityOfContent
        for child in item.get("ContentSequence", []):
            yield from walk(child)

    values = list(walk(ds))
    assert len(values) > 5 and set(values) == {"SEPARATE"}


def test_three_groups_per_lesion_reference_segment_and_source_series(written: Written, content: ReportContent):
    sr = hd.sr.srread(written.sr)
    groups = _groups(sr)
    assert len(groups) == 3 * len(content.lesions)
    for lesion in content.lesions:
        seg = content.source.segment(lesion.segment_number)
        mine = [g for g in groups if g.tracking_uid == seg.tracking_uid]
        assert len(mine) == 3
        for g in mine:
            ref = g.referenced_segment
            assert ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == lesion.segment_number
            assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == content.source.seg.SOPInstanceUID
            assert content.source.t1ce_series_uid == ref[1].UID
            assert g.finding_type.value == C.FINDING_SECONDARY_NEOPLASM.value


def _lesion_groups(written: Written, content: ReportContent, n: int) -> list[Any]:
    uid = content.source.segment(n).tracking_uid
    return [g for g in _groups(hd.sr.srread(written.sr)) if g.tracking_uid == uid]


def test_classification_group(written: Written, content: ReportContent):
    for lesion in content.lesions:
        g = _lesion_groups(written, content, lesion.segment_number)[0]
        qual = {q.name.value: q.value for q in g.get_qualitative_evaluations()}
        assert qual[C.PREDICTED_SUBTYPE.value].value == C.SUBTYPE_CODES[lesion.subtype.label].value
        assert lesion.er is not None and lesion.her2_tier is not None and lesion.her2 is not None
        er = C.ER_POSITIVE if lesion.er.label == "positive" else C.ER_NEGATIVE
        assert qual[C.ER_STATUS.value].value == er.value
        assert qual[C.HER2_CATEGORY.value].value == C.HER2_TIER_CODES[lesion.her2_tier.label].value
        assert qual[C.SUBTYPE_MODEL.value].value == C.SUBTYPE_MODEL_WITH_PRIMARY.value
        assert qual[C.OOD_FLAG.value].value == (C.YES if lesion.out_of_distribution else C.NO).value
        nums = {m.name.value: m for m in g.get_measurements()}
        subtype = [nums[C.SUBTYPE_PROBABILITY[k].value] for k in C.SUBTYPE_CODES]
        assert math.isclose(sum(float(m.value) for m in subtype), 1.0, abs_tol=1e-6)
        for k, m in zip(C.SUBTYPE_CODES, subtype, strict=True):
            assert _mods(m)["CLASS"] == C.SUBTYPE_CODES[k].value
            assert m.unit.value == "1"
            assert math.isclose(float(m.value), lesion.subtype.probabilities[k], abs_tol=1e-9)
        tiers = [float(nums[C.HER2_TIER_PROBABILITY[k].value].value) for k in C.HER2_TIER_CODES]
        assert math.isclose(sum(tiers), 1.0, abs_tol=1e-6)
        assert math.isclose(float(nums["P_HER2POS"].value), lesion.her2.probabilities["positive"])


def test_algorithm_identification_in_every_group(written: Written):
    ds = pydicom.dcmread(written.sr)
    groups = ds.ContentSequence[-2].ContentSequence  # Imaging Measurements
    for g in groups:
        items = {c.ConceptNameCodeSequence[0].CodeValue: c for c in g.ContentSequence}
        assert items["111001"].TextValue == "BCBM AI node"
        params = [c.TextValue for c in g.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "111002"]
        assert sum(f"sha256={SHA}" in p for p in params) == 5


def test_shap_group(written: Written, content: ReportContent):
    for lesion in content.lesions:
        g = _lesion_groups(written, content, lesion.segment_number)[1]
        nums = g.get_measurements()
        e = lesion.explanation
        assert e is not None
        assert len(nums) == len(e.contributions) + 1
        by_code = {m.name.value: m for m in nums}
        for c in e.contributions:
            m = by_code[C.shap_code(c.feature, e.explained_class).value]
            assert math.isclose(float(m.value), c.contribution, abs_tol=1e-9)
            mods = _mods(m)
            assert mods["EXPLFEAT"] == C.feature_code(c.feature).concept.value
            assert mods["EXPLCLASS"] == C.SUBTYPE_CODES[e.explained_class].value
            if c.feature.startswith("t1ce_"):
                assert mods["EXPLSEQ"] == "110804"
        assert math.isclose(float(by_code["SHAPBASE"].value), e.base_value)


def test_raw_value_group(written: Written, content: ReportContent):
    lesion = content.lesions[0]
    g = _lesion_groups(written, content, 1)[2]
    nums = {m.name.value: m for m in g.get_measurements()}
    assert math.isclose(float(nums[C.LESION_VOLUME.value].value), lesion.volume_ml * 1000)
    assert nums[C.LESION_VOLUME.value].unit.value == "mm3"
    assert math.isclose(float(nums["YEKZ"].value), 1500.0)  # shape_VoxelVolume (1 mm grid), its own concept
    assert C.LESION_VOLUME.value == "118565006"
    assert math.isclose(float(nums["TU9B"].value), 5.12)
    assert _mods(nums["TU9B"])["EXPLSEQ"] == "110804"
    assert nums["QCFX"].unit.value == "1"


def test_summary_text_has_disclaimer_and_each_lesion(written: Written, content: ReportContent):
    container = pydicom.dcmread(written.sr).ContentSequence[-1]
    assert container.ConceptNameCodeSequence[0].CodeValue == "C0034375"  # TID 1500 row 12
    texts = _texts(container)
    assert DISCLAIMER in texts[0] and "Not verified" in texts[0]
    # then node.sr.trust: one provenance text per model, one confidence/agreement text per lesion
    assert len(texts) == 1 + len(content.lesions) + len(content.algorithm.models) + len(content.lesions)
    assert "subtype HR-/HER2+ (p=0.65)" in texts[1]
    assert "OUT OF TRAINING DISTRIBUTION" in texts[2] and "OUT OF" not in texts[1]


@pytest.mark.parametrize("sop_class", [SrSopClass.COMPREHENSIVE, SrSopClass.ENHANCED])
def test_fallback_sop_classes_round_trip(content: ReportContent, tmp_path, sop_class):
    path = write_instance(build_report(content, sop_class=sop_class), tmp_path)
    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == sop_class
    assert len(_groups(sr)) == 3 * len(content.lesions)


def test_minimal_report_without_primary(source: SourceStudy, tmp_path: Path):
    """Subtype head only, no explanation, the no-primary model: two groups per lesion, no PRIMSUBTYPE item."""
    lesion = LesionResult(2, HeadResult.from_prediction("subtype", subtype_prediction("TN")), 0.3)
    content = ReportContent(source=source, lesions=(lesion,), algorithm=algorithm(("subtype-noprimary",)),
                            subtype_model=SubtypeModel.WITHOUT_PRIMARY, pons=PonsSummary("whole-brain"))
    path = write_instance(build_report(content), tmp_path)
    assert validate_sr(path, checks=("roundtrip", "dsrdump", "dciodvfy", "tid1500reader")) == []
    groups = _groups(hd.sr.srread(path))
    assert len(groups) == 2
    qual = {q.name.value: q.value.value for q in groups[0].get_qualitative_evaluations()}
    assert qual[C.SUBTYPE_MODEL.value] == C.SUBTYPE_MODEL_WITHOUT_PRIMARY.value
    assert C.PRIMARY_SUBTYPE.value not in qual and C.ER_STATUS.value not in qual
    assert [m.name.value for m in groups[1].get_measurements()] == [C.LESION_VOLUME.value]
