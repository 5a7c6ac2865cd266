"""Read-only views of the ledger for the dashboard, the API and the metrics: a few aggregate queries each,
returned as frozen records (the web layer shapes them for its pages and JSON, see :mod:`node.web.queries`).

Rows carry UIDs, AE titles and paths, never patient names or IDs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.ledger.audit import audit_record_of
from node.ledger.db import Ledger
from node.ledger.deliveries import OutboxItem, outbox_item, with_study_uid
from node.ledger.records import AuditRecord
from node.ledger.states import DeliveryState, JobState, StudyState
from node.ledger.tables import AuditEvent, Delivery, Instance, Job, Series, Study
from node.ledger.transaction import run

FINISHED = (JobState.DONE, JobState.FAILED)


@dataclass(frozen=True)
class JobSummary:
    id: int
    study_instance_uid: str
    state: JobState
    study_version: int
    created_at: float
    updated_at: float  # when it finished, for a done or failed job
    reason: str | None
    forced: bool
    supersedes_job_id: int | None


@dataclass(frozen=True)
class SeriesSummary:
    series_instance_uid: str
    series_number: int | None
    series_description: str
    modality: str
    instances: int


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    state: StudyState
    version: int
    first_received_at: float
    last_received_at: float
    state_changed_at: float
    forced: bool
    reason: str | None
    series_count: int
    instance_count: int
    latest_job: JobSummary | None
    deliveries: Mapping[str, int] = field(default_factory=dict)  # state -> count, over all jobs


@dataclass(frozen=True)
class StudyHistory:
    """One study with its series, every job, delivery and audit event."""

    summary: StudySummary
    series: tuple[SeriesSummary, ...]
    jobs: tuple[JobSummary, ...]
    deliveries: tuple[OutboxItem, ...]
    audit: tuple[AuditRecord, ...]


def _job(job: Job, study_uid: str) -> JobSummary:
    return JobSummary(
        id=job.id, study_instance_uid=study_uid, state=job.state, study_version=job.study_version,
        created_at=job.created_at, updated_at=job.updated_at, reason=job.reason, forced=job.forced,
        supersedes_job_id=job.supersedes_job_id,
    )


def _summary(study: Study, series: int, instances: int, job: Job | None, deliveries: dict[str, int]) -> StudySummary:
    uid = study.study_instance_uid
    return StudySummary(
        study_instance_uid=uid, state=study.state, version=study.version,
        first_received_at=study.first_received_at, last_received_at=study.last_received_at,
        state_changed_at=study.state_changed_at, forced=study.forced, reason=study.reason,
        series_count=series, instance_count=instances, latest_job=None if job is None else _job(job, uid),
        deliveries=deliveries,
    )


def study_summaries(
    ledger: Ledger, *, states: tuple[StudyState, ...] | None = None, limit: int = 500
) -> list[StudySummary]:
    """Studies, most recently received first, with counts, their latest job and delivery states."""

    def op(session: Session) -> list[StudySummary]:
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
            _summary(s, series.get(s.id, 0), instances.get(s.id, 0), latest.get(s.id),
                     dict(delivery_counts.get(s.id, {})))
            for s in studies
        ]

    return run(ledger, op)


def study_history(ledger: Ledger, study_instance_uid: str) -> StudyHistory | None:
    """One study in full; ``None`` when the ledger has no such study."""

    def op(session: Session) -> StudyHistory | None:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            return None
        uid = study.study_instance_uid
        series = tuple(
            SeriesSummary(s.series_instance_uid, s.series_number, s.series_description, s.modality, count)
            for s, count in session.execute(
                select(Series, func.count(Instance.id)).outerjoin(Instance, Instance.series_id == Series.id)
                .where(Series.study_id == study.id).group_by(Series.id).order_by(Series.series_number, Series.id)
            ).all()
        )
        job_rows = list(session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)))
        deliveries = tuple(
            outbox_item(d, uid) for d in session.scalars(
                select(Delivery).join(Job, Delivery.job_id == Job.id).where(Job.study_id == study.id)
                .order_by(Delivery.id)
            )
        )
        audit = tuple(
            audit_record_of(e) for e in session.scalars(
                select(AuditEvent).where(AuditEvent.study_instance_uid == uid).order_by(AuditEvent.id)
            )
        )
        counts = Counter(d.state.value for d in deliveries)
        summary = _summary(study, len(series), sum(s.instances for s in series),
                           job_rows[-1] if job_rows else None, dict(counts))
        return StudyHistory(summary, series, tuple(_job(j, uid) for j in job_rows), deliveries, audit)

    return run(ledger, op)


def delivery_list(ledger: Ledger, *, state: DeliveryState | None = None, limit: int = 500) -> list[OutboxItem]:
    """Deliveries, newest first, optionally of one state."""

    def op(session: Session) -> list[OutboxItem]:
        query = with_study_uid()
        if state is not None:
            query = query.where(Delivery.state == state)
        rows = session.execute(query.order_by(Delivery.id.desc()).limit(limit)).all()
        return [outbox_item(d, uid) for d, uid in rows]

    return run(ledger, op)


def delivery(ledger: Ledger, delivery_id: int) -> OutboxItem | None:
    def op(session: Session) -> OutboxItem | None:
        row = session.execute(with_study_uid().where(Delivery.id == delivery_id)).first()
        return None if row is None else outbox_item(row[0], row[1])

    return run(ledger, op)


def failed_jobs(ledger: Ledger, limit: int = 500) -> list[JobSummary]:
    """Failed jobs, newest first."""

    def op(session: Session) -> list[JobSummary]:
        rows = session.execute(
            select(Job, Study.study_instance_uid).join(Study).where(Job.state == JobState.FAILED)
            .order_by(Job.id.desc()).limit(limit)
        ).all()
        return [_job(job, uid) for job, uid in rows]

    return run(ledger, op)


def recent_audit(ledger: Ledger, limit: int = 200, prefix: str | None = None) -> list[AuditRecord]:
    """The latest audit events, newest first, optionally only those whose name starts with ``prefix``."""

    def op(session: Session) -> list[AuditRecord]:
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if prefix is not None:
            query = query.where(AuditEvent.event.startswith(prefix))
        return [audit_record_of(e) for e in session.scalars(query)]

    return run(ledger, op)


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
    """Everything ``/metrics`` reports from the ledger, read in one transaction."""

    def op(session: Session) -> LedgerCounts:
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

    return run(ledger, op)
