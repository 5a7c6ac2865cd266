"""Not-assessed lesions in the SR (node.sr.assessment): coded reason + text, a group per refused segment, a
report with no predicted lesion at all, and the companion saying it in words. Every SR is re-read and validated
(dciodvfy, dsrdump, PixelMed, the TID 1500 reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.sr import assessment as A
from node.sr import codes as C
from node.sr.assessment import NotAssessedLesion
from node.sr.companion import build_companion_pdf, build_companion_sc, render_pdf
from node.sr.content import PonsSummary, ReportContent, SubtypeModel
from node.sr.report import build_report, write_instance
from node.sr.source import SourceStudy
from node.sr.validate import validate_object, validate_sr
from node.vocabulary import NotAssessedReason

from .conftest import algorithm, lesions


def _groups(sr: Any) -> list[Any]:
    return list(sr.content.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment))


def _texts(ds: Dataset) -> list[str]:
    out = []
    for item in ds.ContentSequence:
        if item.ValueType == "TEXT":
            out.append(item.TextValue)
        if "ContentSequence" in item:
            out += _texts(item)
    return out


def _qual(group: Any) -> dict[str, tuple[str, str]]:
    return {q.name.value: (q.value.scheme_designator, q.value.value) for q in group.get_qualitative_evaluations()}


def test_reason_codes_are_complete_and_private_codes_one_to_one() -> None:
    assert set(A.REASON_CODES) == set(NotAssessedReason)
    private = [*C.all_private_codes(), *A.all_private_codes()]
    assert len({c.value for c in private}) == len(private)
    assert len({c.meaning for c in private}) == len(private)
    # standard codes where they exist: the tissue of a segment that is not a lesion
    assert A.REASON_CODES[NotAssessedReason.SEGMENT_OEDEMA].value == "79654002"
    assert A.REASON_CODES[NotAssessedReason.SEGMENT_OEDEMA].scheme_designator == "SCT"
    with pytest.raises(ValueError, match="in words"):
        NotAssessedLesion(1, "Lesion 1", NotAssessedReason.LESION_TOO_SMALL, " ")


def test_one_predicted_and_one_not_assessed_lesion(source: SourceStudy, tmp_path: Path) -> None:
    refused = NotAssessedLesion(2, "Lesion 2", NotAssessedReason.LESION_TOO_SMALL,
                                "its volume 0.040 mL is below the minimum of 0.1 mL", 0.04)
    content = ReportContent(source=source, lesions=lesions()[:1], algorithm=algorithm(),
                            subtype_model=SubtypeModel.WITH_PRIMARY, pons=PonsSummary("auto"),
                            primary_subtype="HR-/HER2+", not_assessed=(refused,))
    path = write_instance(build_report(content), tmp_path)
    assert validate_sr(path) == []
    groups = _groups(hd.sr.srread(path))
    assert len(groups) == 3 + 1  # three for the predicted lesion, one for the refused one
    refused_group = groups[-1]
    qual = _qual(refused_group)
    assert qual[A.AI_ASSESSMENT.value] == ("SCT", "373121007")  # Not evaluated
    assert qual[A.NOT_ASSESSED_REASON.value] == ("99BCMETS", "LESIONTOOSMALL")
    assert C.PREDICTED_SUBTYPE.value not in qual and C.ER_STATUS.value not in qual
    assert [m.value for m in refused_group.get_measurements()] == [pytest.approx(40.0)]
    assert refused_group.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == 2
    assert refused_group.tracking_uid == source.segment(2).tracking_uid
    # the predicted lesion names its intensity reference (coded)
    assert _qual(groups[0])[A.INTENSITY_REFERENCE.value] == ("99BCMETS", "REFPONSAUTO")
    texts = _texts(pydicom.dcmread(path))
    assert any(t.startswith("AI prediction") and "1 segment(s) NOT ASSESSED" in t for t in texts)
    assert any("SEG segment 2" in t and "NOT ASSESSED" in t and "below the minimum" in t for t in texts)
    with pytest.raises(ValueError, match="reported once"):
        ReportContent(source=source, lesions=lesions()[:1], algorithm=algorithm(),
                      subtype_model=SubtypeModel.WITH_PRIMARY, pons=PonsSummary("auto"), primary_subtype="HR-/HER2+",
                      not_assessed=(NotAssessedLesion(1, "x", NotAssessedReason.MODEL_REFUSED, "no"),))


def test_a_study_with_no_assessed_lesion_still_gets_a_valid_report(source: SourceStudy, tmp_path: Path) -> None:
    gates = "only 0 % of the ROI is inside the T2 field of view"
    refused = tuple(NotAssessedLesion(n, f"Lesion {n}", NotAssessedReason.REFERENCE_OUTSIDE_FOV, gates, 1.0 * n)
                    for n in (1, 2))  # fmt: skip
    oedema = NotAssessedLesion(1, "Oedema", NotAssessedReason.SEGMENT_OEDEMA, "its label names oedema")
    content = ReportContent(source=source, lesions=(), algorithm=algorithm(("subtype-noprimary",)),
                            subtype_model=SubtypeModel.WITHOUT_PRIMARY, pons=PonsSummary("none", gates),
                            not_assessed=refused)
    path = write_instance(build_report(content), tmp_path)
    assert validate_sr(path) == []
    groups = _groups(hd.sr.srread(path))
    assert [_qual(g)[A.NOT_ASSESSED_REASON.value] for g in groups] == [("99BCMETS", "REFOUTSIDEFOV")] * 2
    assert all(C.PREDICTED_SUBTYPE.value not in _qual(g) for g in groups)
    texts = _texts(pydicom.dcmread(path))
    summary = next(t for t in texts if t.startswith("AI prediction"))
    assert "NO LESION WAS ASSESSED" in summary and "none (pons reference refused)" in summary
    assert sum("Pons reference outside the field of view" in t for t in texts) == 2
    # the companion says it in words: one page, and the PDF
    (sc,) = build_companion_sc(content)
    sc_path = write_instance(sc, tmp_path)
    assert validate_object(sc_path, ("roundtrip",)) == []
    pdf_path = write_instance(build_companion_pdf(content), tmp_path)
    assert validate_object(pdf_path, ("roundtrip",)) == []
    assert render_pdf(content).startswith(b"%PDF")
    # an oedema segment: the finding type is the tissue (SNOMED CT Edema), not a neoplasm
    content = ReportContent(source=source, lesions=(), algorithm=algorithm(("subtype-noprimary",)),
                            subtype_model=SubtypeModel.WITHOUT_PRIMARY, pons=PonsSummary("auto"),
                            not_assessed=(oedema,))
    path = write_instance(build_report(content, sop_instance_uid=pydicom.uid.generate_uid()), tmp_path)
    assert validate_sr(path) == []
    (group,) = _groups(hd.sr.srread(path))
    assert _qual(group)[A.NOT_ASSESSED_REASON.value] == ("SCT", "79654002")
    assert group.finding_type.value == "79654002"


def test_every_not_assessed_code_is_explained_in_docs_sr() -> None:
    text = (Path(__file__).parents[2] / "docs" / "sr.md").read_text(encoding="utf-8")
    section = text[text.index("## Not assessed and scope warnings"):]
    for code in (*A.all_private_codes(), *(c for c in A.REASON_CODES.values() if c.scheme_designator == "SCT")):
        assert code.value in section, code
