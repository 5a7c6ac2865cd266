"""The patient-level statement of the SR (node.sr.patient): the index lesion flag in each lesion's group, the coded
patient-level subtype / rule / discordance in the document-level container, the text first; every SR re-read and
passed through dciodvfy, dsrdump and PixelMed's validator; the companion pages say it in words."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.sr import codes as C
from node.sr import patient as P
from node.sr.companion import _result_lines, render_pdf
from node.sr.content import ReportContent
from node.sr.patient import PatientLevel
from node.sr.report import build_report, write_instance
from node.sr.validate import validate_sr


def _with_patient(content: ReportContent, index: int, primary: str | None, rule: str = "largest") -> ReportContent:
    lesion = next(lesion for lesion in content.lesions if lesion.segment_number == index)
    patient = PatientLevel(index, rule, lesion.subtype.label, lesion.subtype.probability, primary,
                           content.source.segment(index).label)
    return dataclasses.replace(content, patient=patient)


def _container(ds: Dataset) -> Dataset:
    found: Dataset = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    return found


def _codes(item: Dataset) -> dict[str, str]:
    return {c.ConceptNameCodeSequence[0].CodeValue: c.ConceptCodeSequence[0].CodeValue
            for c in item.ContentSequence if c.ValueType == "CODE"}


def _index_flags(path: Path) -> dict[int, str]:
    """Segment number -> the INDEXLESION value of its classification group, from the re-read SR."""
    sr: Any = hd.sr.srread(path)
    flags = {}
    for group in sr.content.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment):
        values = {q.name.value: q.value.value for q in group.get_qualitative_evaluations()}
        if P.INDEX_LESION.value in values:
            number = int(group.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)
            flags[number] = values[P.INDEX_LESION.value]
    return flags


def _write(content: ReportContent, out: Path) -> tuple[Path, Dataset]:
    path = write_instance(build_report(content), out)
    assert validate_sr(path) == []  # dciodvfy, dsrdump -v, PixelMed, highdicom / TID 1500 round trip
    return path, pydicom.dcmread(path)


def test_discordant_index_lesion_is_coded_and_said_first(content: ReportContent, tmp_path: Path) -> None:
    # lesion 2 is predicted TN; the primary is HR-/HER2+: discordant
    report = _with_patient(content, 2, "HR-/HER2+")
    path, ds = _write(report, tmp_path)
    assert _index_flags(path) == {1: C.NO.value, 2: C.YES.value}  # exactly one index lesion
    container = _container(ds)
    coded = _codes(container)
    assert coded[P.PATIENT_SUBTYPE.value] == C.SUBTYPE_CODES["TN"].value
    assert coded[P.INDEX_RULE.value] == "IDX_LARGEST"
    assert coded[P.PRIMARY_REFERENCE.value] == C.SUBTYPE_CODES["HR-/HER2+"].value
    assert coded[P.DISCORDANT.value] == C.YES.value
    texts = [i.TextValue for i in container.ContentSequence if i.ValueType == "TEXT"]
    assert texts[0].startswith("AI prediction - ")  # the report summary stays first
    first_text = texts[1]
    assert first_text.startswith("Patient-level predicted subtype: TN")
    assert container.ContentSequence[-1].ValueType == "CODE"  # coded items after the comments
    assert "index lesion SEG segment 2" in first_text and "DISCORDANT with the primary tumour" in first_text
    lines = _result_lines(report, report.lesions[1])
    assert lines[0].startswith("PATIENT LEVEL: predicted subtype TN") and lines[1].startswith("DISCORDANT")
    assert lines[2].endswith("INDEX LESION")
    assert not _result_lines(report, report.lesions[0])[2].endswith("INDEX LESION")
    assert render_pdf(report).startswith(b"%PDF")


def test_concordant_primary_is_not_flagged(content: ReportContent, tmp_path: Path) -> None:
    report = _with_patient(content, 1, "HR-/HER2+", rule="seg")  # lesion 1 is predicted HR-/HER2+
    path, ds = _write(report, tmp_path)
    coded = _codes(_container(ds))
    assert coded[P.DISCORDANT.value] == C.NO.value and coded[P.INDEX_RULE.value] == "IDX_SEG"
    assert _index_flags(path) == {1: C.YES.value, 2: C.NO.value}
    assert "Concordant with the primary tumour (HR-/HER2+)" in _container(ds).ContentSequence[1].TextValue
    assert not any(line.startswith("DISCORDANT") for line in _result_lines(report, report.lesions[0]))


def test_unknown_primary_states_no_discordance(content: ReportContent, tmp_path: Path) -> None:
    report = _with_patient(content, 1, None)
    _, ds = _write(report, tmp_path)
    coded = _codes(_container(ds))
    assert P.PATIENT_SUBTYPE.value in coded
    assert P.DISCORDANT.value not in coded and P.PRIMARY_REFERENCE.value not in coded


def test_without_patient_level_the_sr_is_unchanged(content: ReportContent) -> None:
    ds = build_report(content)
    patient_codes = {code.value for code in P.PATIENT_CODES}
    assert not any(c.ValueType == "CODE" and c.ConceptNameCodeSequence[0].CodeValue in patient_codes
                   for c in _container(ds).ContentSequence)


def test_index_lesion_must_be_reported(content: ReportContent) -> None:
    with pytest.raises(ValueError, match="not a reported lesion"):
        dataclasses.replace(content, patient=PatientLevel(7, "largest", "TN", 0.5))
    with pytest.raises(ValueError, match="unknown index rule"):
        PatientLevel(1, "biggest", "TN", 0.5)
    with pytest.raises(ValueError, match="unknown primary subtype"):
        PatientLevel(1, "largest", "TN", 0.5, "luminal")


def test_patient_codes_fit_the_private_scheme() -> None:
    values = [c.value for c in P.PATIENT_CODES]
    assert len(set(values)) == len(values)
    assert not set(values) & {c.value for c in C.all_private_codes()}
