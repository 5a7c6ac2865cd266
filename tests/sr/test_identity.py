"""Exactly one result per study version: deterministic SR / companion / failure-SR UIDs, and a superseding result
that references the SR it replaces (PredecessorDocumentsSequence) and says so in words; validated with dsrdump
and dciodvfy like every SR of the node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from node.errors import SegmentationError
from node.sr.companion import _result_lines, build_companion_pdf, build_companion_sc
from node.sr.content import ReportContent
from node.sr.failure import FailureContent, build_failure_report
from node.sr.identity import PriorDocument, ResultIdentity
from node.sr.report import SrSopClass, build_report, report_summary, write_instance
from node.sr.validate import validate_sr

from .conftest import algorithm

DIGEST_1 = "a" * 64
DIGEST_2 = "b" * 64


def uids(ds: pydicom.Dataset) -> tuple[str, str, str]:
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def with_identity(content: ReportContent, digest: str = DIGEST_1, prior: PriorDocument | None = None,
                  version: int | None = 1) -> ReportContent:
    identity = ResultIdentity(content.source.study_instance_uid, digest, prior, version)
    return dataclasses.replace(content, identity=identity)


def test_the_same_study_version_gives_the_same_documents(content: ReportContent) -> None:
    """Two runs over one study version (a redelivery, an overlapping run) build the same SR and companions."""
    first, second = with_identity(content), with_identity(content)
    assert uids(build_report(first)) == uids(build_report(second))
    assert [uids(d) for d in build_companion_sc(first)] == [uids(d) for d in build_companion_sc(second)]
    assert uids(build_companion_pdf(first)) == uids(build_companion_pdf(second))
    # without a ledger (ainode analyse) the evidence decides: still one document per input
    assert uids(build_report(content)) == uids(build_report(content))


def test_another_version_models_or_primary_give_other_documents(content: ReportContent) -> None:
    base = build_report(with_identity(content))
    sc = {uids(d)[2] for d in build_companion_sc(with_identity(content))}
    assert len(sc) == len(content.lesions)  # one SOP instance per page, all different
    other_version = build_report(with_identity(content, DIGEST_2))
    models = tuple(dataclasses.replace(m, sha256="f" * 64) if m.task == "er" else m
                   for m in content.algorithm.models)
    other_models = build_report(with_identity(dataclasses.replace(
        content, algorithm=dataclasses.replace(content.algorithm, models=models))))
    all_uids = {uids(base)[1:], uids(other_version)[1:], uids(other_models)[1:]}
    assert len({u[0] for u in all_uids}) == 3 and len({u[1] for u in all_uids}) == 3
    assert uids(base)[0] == content.source.study_instance_uid  # the study is the source's, never a new one
    assert uids(base)[2] not in sc


def test_identity_of_another_study_is_refused(content: ReportContent) -> None:
    wrong = dataclasses.replace(content, identity=ResultIdentity("1.2.3.4", DIGEST_1))
    with pytest.raises(ValueError, match="another study"):
        build_report(wrong)


def test_superseding_sr_references_and_names_its_predecessor(content: ReportContent, tmp_path: Path) -> None:
    earlier = build_report(with_identity(content, DIGEST_1, version=1))
    prior = PriorDocument(*uids(earlier), str(earlier.SOPClassUID), job_id=7, study_version=1)
    newer = with_identity(content, DIGEST_2, prior, version=2)
    path = write_instance(build_report(newer), tmp_path)
    ds = pydicom.dcmread(path)
    (study_item,) = ds.PredecessorDocumentsSequence
    (series_item,) = study_item.ReferencedSeriesSequence
    (sop_item,) = series_item.ReferencedSOPSequence
    assert (study_item.StudyInstanceUID, series_item.SeriesInstanceUID, sop_item.ReferencedSOPInstanceUID) == \
        uids(earlier)
    assert sop_item.ReferencedSOPClassUID == SrSopClass.COMPREHENSIVE_3D
    assert ds.SOPInstanceUID != earlier.SOPInstanceUID
    summary = ds.ContentSequence[-1].ContentSequence[0].TextValue
    assert "supersedes the earlier AI result" in summary and earlier.SOPInstanceUID in summary
    assert "study version 1 -> 2" in summary
    assert "supersedes the earlier AI result" in report_summary(newer)  # the PDF's summary page prints this
    assert any(earlier.SOPInstanceUID in line for line in _result_lines(newer, newer.lesions[0]))  # the SC pages
    assert validate_sr(path, checks=("roundtrip", "dsrdump", "dciodvfy")) == []


def test_the_same_document_is_not_its_own_predecessor(content: ReportContent) -> None:
    """A re-run with the same inputs makes the very same SR again: nothing to supersede."""
    earlier = build_report(with_identity(content))
    prior = PriorDocument(*uids(earlier), str(earlier.SOPClassUID), job_id=1, study_version=1)
    again = build_report(with_identity(content, prior=prior))
    assert uids(again) == uids(earlier) and "PredecessorDocumentsSequence" not in again
    assert "supersedes" not in report_summary(with_identity(content, prior=prior))


def test_failure_sr_is_deterministic_and_supersedes(study_dir: Path, content: ReportContent,
                                                    tmp_path: Path) -> None:
    files = sorted((study_dir / "t1ce").glob("*.dcm"))[:2]
    study_uid = content.source.study_instance_uid
    error = SegmentationError("segment 2 of the SEG is empty")

    def failure(prior: PriorDocument | None = None) -> pydicom.Dataset:
        identity = ResultIdentity(study_uid, DIGEST_2, prior, 2)
        document: pydicom.Dataset = build_failure_report(
            FailureContent.from_error(error, files, algorithm(("subtype",)), identity))
        return document

    assert uids(failure()) == uids(failure())
    earlier = build_report(with_identity(content))
    prior = PriorDocument(*uids(earlier), str(earlier.SOPClassUID), job_id=3, study_version=1)
    path = write_instance(failure(prior), tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    text = ds.ContentSequence[-1].ContentSequence[0].TextValue
    assert "segment 2 of the SEG is empty" in text and "supersedes the earlier AI result" in text
    assert validate_sr(path, checks=("roundtrip", "dsrdump", "dciodvfy")) == []
    with pytest.raises(ValueError, match="another study"):
        FailureContent.from_error(error, files, algorithm(("subtype",)), ResultIdentity("1.2.3", DIGEST_1))
