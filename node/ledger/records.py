"""Plain frozen records the ledger hands to its callers (no ORM objects leave ``node.ledger``), and the
content digest / idempotency key of a study version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from node.ledger.states import DeliveryState, JobState, StudyState
from node.ledger.tables import Job, Study


@dataclass(frozen=True)
class InstanceHeader:
    """What the listener read from a received dataset (UIDs already checked)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    series_description: str
    series_number: int | None
    frame_of_reference_uid: str | None


@dataclass(frozen=True)
class SpooledInstance:
    """A new instance already durable in the spool (and answered Success), waiting for its ledger rows."""

    header: InstanceHeader
    path: str  # spool-relative
    size_bytes: int
    sha256: str
    calling_ae_title: str
    peer: str | None
    at: float


@dataclass(frozen=True)
class KnownInstance:
    sop_instance_uid: str
    study_instance_uid: str
    path: str
    sha256: str


@dataclass(frozen=True)
class RecordedInstance:
    """The result of :meth:`Repository.record_instance`."""

    study_state: StudyState
    study_version: int
    replaced: bool
    late: bool  # arrived after the study was handed to the job layer
    reopened: bool  # ...and reopened it as a new version (late-instance policy "rerun")


class WrittenFile(Protocol):
    """What a durable spool write reports (``node.spool.StoredFile``)."""

    @property
    def relative_path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class ReceiveOutcome:
    """The result of :meth:`Repository.receive_instance`."""

    stored: bool  # a file was written and recorded (new instance, or a replaced copy)
    identical: bool  # not stored: an identical copy is already recorded
    recorded: RecordedInstance | None  # set when stored


@dataclass(frozen=True)
class SeriesSnapshot:
    series_instance_uid: str
    modality: str
    sop_class_uid: str
    series_description: str
    series_number: int | None
    frame_of_reference_uid: str | None
    files: tuple[str, ...]  # spool-relative paths, in arrival order


@dataclass(frozen=True)
class StudySnapshot:
    study_instance_uid: str
    state: StudyState
    version: int
    opened_at: float
    first_received_at: float
    last_received_at: float
    state_changed_at: float
    content_digest: str  # of the instances held now (see :func:`content_digest`)
    forced: bool
    reason: str | None
    series: tuple[SeriesSnapshot, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.files) for s in self.series)


@dataclass(frozen=True)
class JobRecord:
    id: int
    study_instance_uid: str
    study_version: int
    idempotency_key: str
    content_digest: str
    state: JobState
    forced: bool
    reason: str | None
    supersedes_job_id: int | None
    purpose: str | None = None  # None: process the study; "failure-sr": only send its failure SR


@dataclass(frozen=True)
class DeliveryRecord:
    job_id: int
    destination: str
    sop_instance_uid: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    detail: str | None
    path: str | None = None  # the result file to send


@dataclass(frozen=True)
class AuditRecord:
    at: float
    event: str
    calling_ae_title: str | None
    peer: str | None
    study_instance_uid: str | None
    sop_instance_uid: str | None
    status: int | None
    detail: str | None


def content_digest(instances: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over the sorted ``(SOP Instance UID, file SHA-256)`` pairs: equal iff the same bytes were received."""
    digest = hashlib.sha256()
    for sop_uid, sha in sorted(instances):
        digest.update(f"{sop_uid}={sha}\n".encode("ascii"))
    return digest.hexdigest()


def idempotency_key(study_instance_uid: str, digest: str) -> str:
    """The job key of one study version: the same study re-sent identically gets the same key."""
    return hashlib.sha256(f"{study_instance_uid}\n{digest}".encode("ascii")).hexdigest()


def snapshot_of(study: Study) -> StudySnapshot:
    series = tuple(
        SeriesSnapshot(
            series_instance_uid=s.series_instance_uid,
            modality=s.modality,
            sop_class_uid=s.sop_class_uid,
            series_description=s.series_description,
            series_number=s.series_number,
            frame_of_reference_uid=s.frame_of_reference_uid,
            files=tuple(i.path for i in s.instances),
        )
        for s in study.series
    )
    pairs = [(i.sop_instance_uid, i.sha256) for s in study.series for i in s.instances]
    return StudySnapshot(
        study_instance_uid=study.study_instance_uid,
        state=study.state,
        version=study.version,
        opened_at=study.opened_at,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        state_changed_at=study.state_changed_at,
        content_digest=content_digest(pairs),
        forced=study.forced,
        reason=study.reason,
        series=series,
    )


def job_record_of(job: Job) -> JobRecord:
    return JobRecord(
        id=job.id,
        study_instance_uid=job.study.study_instance_uid,
        study_version=job.study_version,
        idempotency_key=job.idempotency_key,
        content_digest=job.content_digest,
        state=job.state,
        forced=job.forced,
        reason=job.reason,
        supersedes_job_id=job.supersedes_job_id,
        purpose=job.purpose,
    )
