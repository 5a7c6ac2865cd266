"""A short TID 1500 SR saying that a study could not be processed, and why (so the PACS user sees an answer).

Tree: the same observation context and procedure as the result SR; one TID 1501 group (tracking identifier
"AI processing status") with CODE (PROCSTATUS, 99BCMETS) = "not processed: input not usable" or "not processed:
processing error"; and the row-12 "Qualitative Evaluations" container with a TEXT comment that gives the reason
(the :class:`~node.errors.NodeError` message, which never contains patient names or IDs) and the disclaimer.
The evidence is whatever instances of the study were received (at least one, for patient/study identity).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.errors import InvalidStudyError, NodeError
from node.sr import codes as C
from node.sr.content import AlgorithmInfo
from node.sr.identity import ResultIdentity, fingerprint
from node.sr.report import (
    SR_SERIES_NUMBER,
    SrSopClass,
    algorithm_identification,
    build_document,
    observation_context,
    qualitative_container,
)
from node.vocabulary import DISCLAIMER

FAILURE_SERIES_DESCRIPTION = "AI BC subtype: not processed (research use)"


class FailureCategory(StrEnum):
    INVALID_INPUT = "invalid-input"
    PROCESSING_ERROR = "processing-error"

    @property
    def code(self) -> CodedConcept:
        return C.NOT_PROCESSED_INPUT if self is FailureCategory.INVALID_INPUT else C.NOT_PROCESSED_ERROR


@dataclass(frozen=True)
class FailureContent:
    """Why a study was not processed."""

    evidence: tuple[Dataset, ...]
    reason: str
    category: FailureCategory
    algorithm: AlgorithmInfo
    disclaimer: str = DISCLAIMER
    #: which document this is (deterministic UIDs, the SR it supersedes); None = derived from the evidence
    identity: ResultIdentity | None = None

    def __post_init__(self) -> None:
        if not self.evidence:
            raise ValueError("a failure SR needs at least one received instance for patient/study identity")
        if len({str(d.StudyInstanceUID) for d in self.evidence}) != 1:
            raise ValueError("the evidence instances belong to more than one study")
        if not self.reason.strip():
            raise ValueError("the failure reason must not be empty")
        if self.identity is not None and self.identity.study_instance_uid != str(self.evidence[0].StudyInstanceUID):
            raise ValueError("the result identity names another study than the evidence")

    @classmethod
    def from_error(
        cls, error: NodeError, evidence_files: Sequence[Path], algorithm: AlgorithmInfo,
        identity: ResultIdentity | None = None,
    ) -> FailureContent:
        """From the error that stopped the job and the study's received files (headers only are read)."""
        evidence = tuple(pydicom.dcmread(p, stop_before_pixels=True) for p in evidence_files)
        category = (
            FailureCategory.INVALID_INPUT if isinstance(error, InvalidStudyError) else FailureCategory.PROCESSING_ERROR
        )
        return cls(evidence=evidence, reason=error.message, category=category, algorithm=algorithm,
                   identity=identity)

    @property
    def result_identity(self) -> ResultIdentity:
        """The given identity, or one derived from the evidence instances."""
        if self.identity is not None:
            return self.identity
        return ResultIdentity.of_evidence(str(self.evidence[0].StudyInstanceUID),
                                          (str(d.SOPInstanceUID) for d in self.evidence))

    def uids(self) -> tuple[str, str]:
        """(Series, SOP Instance UID) of the failure SR: one document per study version, models and program."""
        identity, fp = self.result_identity, fingerprint(self.algorithm)
        return identity.uid(fp, "failure", "series"), identity.uid(fp, "failure", "instance")


def build_failure_report(
    failure: FailureContent,
    *,
    sop_class: SrSopClass = SrSopClass.COMPREHENSIVE_3D,
    series_number: int = SR_SERIES_NUMBER,
    content_datetime: dt.datetime | None = None,
) -> Any:
    """The failure SR document; Series and SOP Instance UIDs derived from the failure's identity
    (:meth:`FailureContent.uids`); it references (and names) the SR it supersedes, if any."""
    study_uid = str(failure.evidence[0].StudyInstanceUID)
    series_uid, sop_uid = failure.uids()
    prior = failure.result_identity.supersedes(sop_uid)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(generate_uid(entropy_srcs=[study_uid, "processing-status"])), identifier="AI processing status"
        ),
        algorithm_id=algorithm_identification(failure.algorithm),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(C.PROCESSING_STATUS, failure.category.code)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(failure.algorithm),
        procedure_reported=C.PROCEDURE_MRI,
        imaging_measurements=[group],
        title=C.IMAGING_MEASUREMENT_REPORT,
        referenced_images=None,
    )
    text = (
        f"AI analysis not performed - {failure.disclaimer}. The study could not be processed: "
        f"{failure.reason}"
    )
    if prior is not None:
        text += " " + prior.describe(failure.result_identity.study_version)
    report[0].ContentSequence.append(qualitative_container([text]))
    return build_document(
        list(failure.evidence),
        report,
        failure.algorithm,
        sop_class=sop_class,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        series_description=FAILURE_SERIES_DESCRIPTION,
        content_datetime=content_datetime,
        predecessor=prior,
    )
