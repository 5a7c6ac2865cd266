"""The short failure SR: built from a NodeError and received files, validated, says why and what kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from node.errors import NodeError, ProcessingError, SegmentationError
from node.sr.failure import FailureCategory, FailureContent, build_failure_report
from node.sr.report import write_instance
from node.sr.validate import available_tools, validate_sr

from .conftest import algorithm


def _write(study_dir: Path, error: NodeError, tmp_path: Path) -> Path:
    files = sorted((study_dir / "t1ce").glob("*.dcm"))[:2]
    failure = FailureContent.from_error(error, files, algorithm(("subtype",)))
    return write_instance(build_failure_report(failure), tmp_path)


def test_failure_sr_content(study_dir: Path, tmp_path: Path):
    path = _write(study_dir, SegmentationError("segment 2 of the SEG is empty"), tmp_path)
    ds = pydicom.dcmread(path)
    src = pydicom.dcmread(sorted((study_dir / "t1ce").glob("*.dcm"))[0], stop_before_pixels=True)
    assert (ds.PatientID, ds.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert "not processed" in ds.SeriesDescription
    text = ds.ContentSequence[-1].ContentSequence[0].TextValue
    assert "segment 2 of the SEG is empty" in text and "Research use only" in text
    report: Any = hd.sr.srread(path).content
    group = report.get_planar_roi_measurement_groups() + report.get_volumetric_roi_measurement_groups()
    assert group == []  # no lesion groups: nothing was measured
    codes_found = [i.ConceptCodeSequence[0].CodeValue for i in ds.ContentSequence[-2].ContentSequence[0].ContentSequence
                   if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "PROCSTATUS"]
    assert codes_found == [FailureCategory.INVALID_INPUT.code.value]


@pytest.mark.slow
def test_failure_sr_validates(study_dir: Path, tmp_path: Path):
    missing = [t for t, ok in available_tools().items() if not ok]
    path = _write(study_dir, ProcessingError("registration diverged"), tmp_path)
    # tid1500reader wants lesion measurements; the failure SR has none by design
    assert validate_sr(path, checks=("roundtrip", "dsrdump", "dciodvfy", "pixelmed")) == []
    if missing:
        pytest.skip(f"validated without {', '.join(missing)} (not installed)")


def test_failure_category_and_validation(study_dir: Path, tmp_path: Path):
    files = sorted((study_dir / "t1ce").glob("*.dcm"))[:1]
    failure = FailureContent.from_error(ProcessingError("x"), files, algorithm(("subtype",)))
    assert failure.category is FailureCategory.PROCESSING_ERROR
    with pytest.raises(ValueError, match="at least one"):
        FailureContent((), "x", FailureCategory.INVALID_INPUT, algorithm(("subtype",)))
    with pytest.raises(ValueError, match="empty"):
        FailureContent(failure.evidence, " ", FailureCategory.INVALID_INPUT, algorithm(("subtype",)))
