"""Read-only views of the ledger for the dashboard, the API and the metrics: a few aggregate queries each.

Writes never happen here: actions go through :class:`node.ledger.repository.Repository` and
:mod:`node.ledger.deliveries` (see :mod:`node.web.actions`). Rows carry UIDs, AE titles and paths, never patient
names or IDs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from node.ledger.db import Ledger
from node.ledger.tables import AuditEvent, Delivery, DeliveryState, Instance, Job, JobState, Series, Study, StudyState
from node.web.results import JobResult, ResultReader

FINISHED = (JobState.DONE, JobState.FAILED)
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


def _job_view(job: Job, results: ResultReader | None, study_uid: str) -> JobView:
    finished = job.updated_at if job.state in FINISHED else None
    result = results.read(study_uid, job.id) if results is not None and job.state is JobState.DONE else None
    return JobView(
        id=job.id, state=job.state.value, study_version=job.study_version, created_at=job.created_at,
        finished_at=finished, duration_s=None if finished is None else max(0.0, finished - job.created_at),
        reason=job.reason, forced=job.forced, supersedes_job_id=job.supersedes_job_id, result=result,
    )


def _delivery_view(row: Delivery, study_uid: str) -> DeliveryView:
    return DeliveryView(
        id=row.id, job_id=row.job_id, study_instance_uid=study_uid, destination=row.destination,
        sop_instance_uid=row.sop_instance_uid, state=row.state.value, attempts=row.attempts,
        last_status=row.last_status, updated_at=row.updated_at, file=Path(row.detail).name if row.detail else None,
    )


class Queries:
    """The dashboard's reads of one ledger."""

    def __init__(self, ledger: Ledger, results: ResultReader | None = None) -> None:
        self.ledger = ledger
        self.results = results

    def studies(self, *, states: tuple[StudyState, ...] | None = None, limit: int = 500) -> list[StudyRow]:
        """Studies, most recently received first, with counts, their latest job and delivery states."""
        with self.ledger.session() as session:
            query = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
            if states is not None:
                query = query.where(Study.state.in_(states))
            studies = list(session.scalars(query))
            ids = [s.id for s in studies]
            if not ids:
                return []
            series = dict(session.execute(
                select(Series.study_id, func.count(Series.id)).where(Series.study_id.in_(ids)).group_by(Series.study_id)
            ).all())
            instances = dict(session.execute(
                select(Series.study_id, func.count(Instance.id)).join(Instance, Instance.series_id == Series.id)
                .where(Series.study_id.in_(ids)).group_by(Series.study_id)
            ).all())
            latest: dict[int, Job] = {}
            for job in session.scalars(select(Job).where(Job.study_id.in_(ids)).order_by(Job.id)):
                latest[job.study_id] = job
            delivery_counts: dict[int, Counter[str]] = defaultdict(Counter)
            for study_id, state, count in session.execute(
                select(Job.study_id, Delivery.state, func.count(Delivery.id)).join(Job, Delivery.job_id == Job.id)
                .where(Job.study_id.in_(ids)).group_by(Job.study_id, Delivery.state)
            ).all():
                delivery_counts[study_id][state.value] = count
            return [
                self._row(s, series.get(s.id, 0), instances.get(s.id, 0), latest.get(s.id),
                          dict(delivery_counts.get(s.id, {})))
                for s in studies
            ]

    def _row(self, study: Study, series: int, instances: int, job: Job | None,
             deliveries: dict[str, int]) -> StudyRow:
        uid = study.study_instance_uid
        return StudyRow(
            study_instance_uid=uid, state=study.state.value, version=study.version,
            first_received_at=study.first_received_at, last_received_at=study.last_received_at,
            state_changed_at=study.state_changed_at, forced=study.forced, reason=study.reason,
            series_count=series, instance_count=instances,
            latest_job=None if job is None else _job_view(job, self.results, uid), deliveries=deliveries,
        )

    def study(self, study_instance_uid: str) -> StudyDetail | None:
        with self.ledger.session() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
            if study is None:
                return None
            uid = study.study_instance_uid
            series_rows = list(session.execute(
                select(Series, func.count(Instance.id)).outerjoin(Instance, Instance.series_id == Series.id)
                .where(Series.study_id == study.id).group_by(Series.id).order_by(Series.series_number, Series.id)
            ).all())
            series = tuple(
                SeriesView(s.series_instance_uid, s.series_number, s.series_description, s.modality, count)
                for s, count in series_rows
            )
            job_rows = list(session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)))
            jobs = tuple(_job_view(j, self.results, uid) for j in job_rows)
            deliveries = tuple(
                _delivery_view(d, uid) for d in session.scalars(
                    select(Delivery).join(Job, Delivery.job_id == Job.id).where(Job.study_id == study.id)
                    .order_by(Delivery.id)
                )
            )
            audit = tuple(
                AuditView(e.at, e.event, e.peer, e.calling_ae_title, e.sop_instance_uid, e.status, e.detail)
                for e in session.scalars(
                    select(AuditEvent).where(AuditEvent.study_instance_uid == uid).order_by(AuditEvent.id)
                )
            )
            counts = Counter(d.state for d in deliveries)
            row = self._row(study, len(series), sum(s.instances for s in series), job_rows[-1] if job_rows else None,
                            dict(counts))
            return StudyDetail(row, series, jobs, deliveries, audit)

    def deliveries(self, *, state: DeliveryState | None = None, limit: int = 500) -> list[DeliveryView]:
        with self.ledger.session() as session:
            query = select(Delivery, Study.study_instance_uid).join(Job, Delivery.job_id == Job.id).join(Study)
            if state is not None:
                query = query.where(Delivery.state == state)
            rows = session.execute(query.order_by(Delivery.id.desc()).limit(limit)).all()
            return [_delivery_view(d, uid) for d, uid in rows]

    def delivery(self, delivery_id: int) -> DeliveryView | None:
        with self.ledger.session() as session:
            row = session.execute(
                select(Delivery, Study.study_instance_uid).join(Job, Delivery.job_id == Job.id).join(Study)
                .where(Delivery.id == delivery_id)
            ).first()
            return None if row is None else _delivery_view(*row)

    def failed_jobs(self, limit: int = 500) -> list[tuple[str, JobView]]:
        with self.ledger.session() as session:
            rows = session.execute(
                select(Job, Study.study_instance_uid).join(Study).where(Job.state == JobState.FAILED)
                .order_by(Job.id.desc()).limit(limit)
            ).all()
            return [(uid, _job_view(job, None, uid)) for job, uid in rows]

    def recent_audit(self, limit: int = 200, prefix: str | None = None) -> list[tuple[str | None, AuditView]]:
        with self.ledger.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if prefix is not None:
                query = query.where(AuditEvent.event.startswith(prefix))
            return [
                (e.study_instance_uid,
                 AuditView(e.at, e.event, e.peer, e.calling_ae_title, e.sop_instance_uid, e.status, e.detail))
                for e in session.scalars(query)
            ]


# -- aggregates for /metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerCounts:
    instances_by_ae: dict[str, int]
    studies_by_state: dict[str, int]
    jobs_by_state: dict[str, int]
    deliveries_by_state: dict[str, int]
    audit_counts: dict[str, int]  # delivery-retry / delivery-dead-letter / web-login-failed events so far
    finished_jobs: list[tuple[str, int, str, float]]  # (study uid, job id, state, queued -> finished seconds)


COUNTED_EVENTS = ("delivery-retry", "delivery-dead-letter", "web-login-failed")


def ledger_counts(ledger: Ledger) -> LedgerCounts:
    with ledger.session() as session:
        by_ae = dict(session.execute(
            select(Instance.calling_ae_title, func.count(Instance.id)).group_by(Instance.calling_ae_title)
        ).all())
        studies = {s.value: n for s, n in session.execute(
            select(Study.state, func.count(Study.id)).group_by(Study.state)).all()}
        jobs = {s.value: n for s, n in session.execute(
            select(Job.state, func.count(Job.id)).group_by(Job.state)).all()}
        deliveries = {s.value: n for s, n in session.execute(
            select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state)).all()}
        events = dict(session.execute(
            select(AuditEvent.event, func.count(AuditEvent.id)).where(AuditEvent.event.in_(COUNTED_EVENTS))
            .group_by(AuditEvent.event)
        ).all())
        finished = [
            (uid, job_id, state.value, max(0.0, updated - created))
            for job_id, uid, state, created, updated in session.execute(
                select(Job.id, Study.study_instance_uid, Job.state, Job.created_at, Job.updated_at).join(Study)
                .where(Job.state.in_(FINISHED)).order_by(Job.id)
            ).all()
        ]
    return LedgerCounts(by_ae, studies, jobs, deliveries, events, finished)
