"""What the dashboard and the API show of the ledger: its read-only views (:mod:`node.ledger.views`) shaped for
the pages and the JSON, with each done job's result summary attached.

Writes never happen here: actions go through :class:`node.ledger.repository.Repository` and
:mod:`node.ledger.deliveries` (see :mod:`node.web.actions`). Rows carry UIDs, AE titles and paths, never patient
names or IDs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from node.ledger import views
from node.ledger.db import Ledger
from node.ledger.deliveries import OutboxItem
from node.ledger.records import AuditRecord
from node.ledger.states import DeliveryState, JobState, StudyState
from node.web.results import JobResult, ResultReader

FINISHED = views.FINISHED
RERUNNABLE = (StudyState.DONE, StudyState.FAILED)


@dataclass(frozen=True)
class JobView:
    id: int
    state: str
    study_version: int
    created_at: float
    finished_at: float | None
    duration_s: float | None  # queued -> finished
    reason: str | None
    forced: bool
    supersedes_job_id: int | None
    result: JobResult | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["result"] = None if self.result is None else self.result.as_json()
        return data


@dataclass(frozen=True)
class DeliveryView:
    id: int
    job_id: int
    study_instance_uid: str
    destination: str
    sop_instance_uid: str
    state: str
    attempts: int
    last_status: int | None
    updated_at: float
    file: str | None  # the result file's name (the ledger holds its path)
    last_error: str | None = None
    next_attempt_at: float | None = None  # a pending delivery's next try
    commitment: str | None = None  # Storage Commitment: "awaiting", "committed", "not committed"; None: not asked
    committed_at: float | None = None


@dataclass(frozen=True)
class SeriesView:
    series_instance_uid: str
    series_number: int | None
    series_description: str
    modality: str
    instances: int


@dataclass(frozen=True)
class StudyRow:
    study_instance_uid: str
    state: str
    version: int
    first_received_at: float
    last_received_at: float
    state_changed_at: float
    forced: bool
    reason: str | None
    series_count: int
    instance_count: int
    latest_job: JobView | None
    deliveries: dict[str, int] = field(default_factory=dict)  # state -> count, over all jobs

    @property
    def rerunnable(self) -> bool:
        return self.state in RERUNNABLE

    @property
    def prediction(self) -> str | None:
        job = self.latest_job
        return None if job is None or job.result is None else job.result.summary

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["latest_job"] = None if self.latest_job is None else self.latest_job.as_json()
        data["prediction"] = self.prediction
        return data


@dataclass(frozen=True)
class AuditView:
    at: float
    event: str
    peer: str | None
    calling_ae_title: str | None
    sop_instance_uid: str | None
    status: int | None
    detail: str | None


@dataclass(frozen=True)
class StudyDetail:
    row: StudyRow
    series: tuple[SeriesView, ...]
    jobs: tuple[JobView, ...]
    deliveries: tuple[DeliveryView, ...]
    audit: tuple[AuditView, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            **self.row.as_json(),
            "series": [asdict(s) for s in self.series],
            "jobs": [j.as_json() for j in self.jobs],
            "deliveries": [asdict(d) for d in self.deliveries],
            "audit": [asdict(a) for a in self.audit],
        }


def _job_view(job: views.JobSummary, results: ResultReader | None) -> JobView:
    finished = job.updated_at if job.state in FINISHED else None
    result = (results.read(job.study_instance_uid, job.id)
              if results is not None and job.state is JobState.DONE else None)
    return JobView(
        id=job.id, state=job.state.value, study_version=job.study_version, created_at=job.created_at,
        finished_at=finished, duration_s=None if finished is None else max(0.0, finished - job.created_at),
        reason=job.reason, forced=job.forced, supersedes_job_id=job.supersedes_job_id, result=result,
    )


def _delivery_view(item: OutboxItem) -> DeliveryView:
    return DeliveryView(
        id=item.id, job_id=item.job_id, study_instance_uid=item.study_instance_uid, destination=item.destination,
        sop_instance_uid=item.sop_instance_uid, state=item.state.value, attempts=item.attempts,
        last_status=item.last_status, updated_at=item.updated_at, file=item.path.name if item.path else None,
        last_error=item.last_error,
        next_attempt_at=item.next_attempt_at if item.state is DeliveryState.PENDING else None,
        commitment=_commitment(item), committed_at=item.committed_at,
    )


def _commitment(item: OutboxItem) -> str | None:
    if item.state is DeliveryState.COMMITTED:
        return "committed"
    if item.state is DeliveryState.COMMIT_FAILED:
        return "not committed"
    return "awaiting" if item.awaiting_commitment else None


def _audit_view(event: AuditRecord) -> AuditView:
    return AuditView(event.at, event.event, event.peer, event.calling_ae_title, event.sop_instance_uid, event.status,
                     event.detail)


class Queries:
    """The dashboard's reads of one ledger."""

    def __init__(self, ledger: Ledger, results: ResultReader | None = None) -> None:
        self.ledger = ledger
        self.results = results

    def studies(self, *, states: tuple[StudyState, ...] | None = None, limit: int = 500) -> list[StudyRow]:
        """Studies, most recently received first, with counts, their latest job and delivery states."""
        return [self._row(s) for s in views.study_summaries(self.ledger, states=states, limit=limit)]

    def _row(self, study: views.StudySummary) -> StudyRow:
        return StudyRow(
            study_instance_uid=study.study_instance_uid, state=study.state.value, version=study.version,
            first_received_at=study.first_received_at, last_received_at=study.last_received_at,
            state_changed_at=study.state_changed_at, forced=study.forced, reason=study.reason,
            series_count=study.series_count, instance_count=study.instance_count,
            latest_job=None if study.latest_job is None else _job_view(study.latest_job, self.results),
            deliveries=dict(study.deliveries),
        )

    def study(self, study_instance_uid: str) -> StudyDetail | None:
        history = views.study_history(self.ledger, study_instance_uid)
        if history is None:
            return None
        return StudyDetail(
            self._row(history.summary),
            tuple(SeriesView(s.series_instance_uid, s.series_number, s.series_description, s.modality, s.instances)
                  for s in history.series),
            tuple(_job_view(j, self.results) for j in history.jobs),
            tuple(_delivery_view(d) for d in history.deliveries),
            tuple(_audit_view(e) for e in history.audit),
        )

    def deliveries(self, *, state: DeliveryState | None = None, limit: int = 500) -> list[DeliveryView]:
        return [_delivery_view(d) for d in views.delivery_list(self.ledger, state=state, limit=limit)]

    def delivery(self, delivery_id: int) -> DeliveryView | None:
        item = views.delivery(self.ledger, delivery_id)
        return None if item is None else _delivery_view(item)

    def failed_jobs(self, limit: int = 500) -> list[tuple[str, JobView]]:
        return [(job.study_instance_uid, _job_view(job, None)) for job in views.failed_jobs(self.ledger, limit)]

    def recent_audit(self, limit: int = 200, prefix: str | None = None) -> list[tuple[str | None, AuditView]]:
        return [(e.study_instance_uid, _audit_view(e)) for e in views.recent_audit(self.ledger, limit, prefix)]
