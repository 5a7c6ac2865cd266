"""Deliveries: the job layer's record of each result object to send, and the outbox's operations on them.

A delivery row is one result object for one destination: ``path`` holds the file to send (rows written before
the column existed keep it in ``detail``, which is read instead while ``path`` is NULL), ``attempts`` the
attempts made in the current series, ``updated_at`` when the last attempt started or ended, ``last_status`` the
last DIMSE status. States: ``pending`` (to send, or to retry once its backoff has passed), ``sent``, ``failed``
(dead letter: given up, until :func:`resend`). Every transition is audited (``delivery-sent``,
``delivery-retry``, ``delivery-dead-letter``, ``delivery-resend``).

Claiming is a conditional update (attempts and ``updated_at`` unchanged since read), so two workers never send
the same due row twice in one backoff window; a worker that dies mid-send leaves the row pending, and it is
retried once its backoff has passed (at-least-once delivery; a PACS stores a resent SOP instance once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Select, exists, select, update
from sqlalchemy.orm import Session

from node.ledger.jobs import finish_in, get_job
from node.ledger.records import DeliveryRecord, JobRecord, content_digest, idempotency_key, job_record_of
from node.ledger.states import FAILURE_SR_PURPOSE, DeliveryState, JobState, StudyState
from node.ledger.studies import load_study
from node.ledger.tables import Delivery, Job, Study
from node.ledger.transaction import Operations, run, write_audit


@dataclass(frozen=True)
class OutboxItem:
    """One delivery row, as the outbox (and the dashboard) sees it."""

    id: int
    job_id: int
    study_instance_uid: str
    destination: str
    sop_instance_uid: str
    path: Path | None
    state: DeliveryState
    attempts: int
    updated_at: float
    last_status: int | None


def file_of(row: Delivery) -> str | None:
    """The row's result file: ``path``, or ``detail`` for a row written before the ``path`` column existed."""
    return row.path if row.path is not None else row.detail


def outbox_item(row: Delivery, study_uid: str) -> OutboxItem:
    file = file_of(row)
    return OutboxItem(
        id=row.id, job_id=row.job_id, study_instance_uid=study_uid, destination=row.destination,
        sop_instance_uid=row.sop_instance_uid, path=Path(file) if file else None, state=row.state,
        attempts=row.attempts, updated_at=row.updated_at, last_status=row.last_status,
    )


def with_study_uid() -> Select[Delivery, str]:
    """Delivery rows with the Study Instance UID of their job."""
    return select(Delivery, Study.study_instance_uid).join(Job, Delivery.job_id == Job.id).join(Study)


@dataclass(frozen=True)
class ResultObject:
    """One validated result file of a finished job, to send to every destination."""

    path: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ResultDocument:
    """The SR (result or failure SR) a job produced: what a later, superseding SR references."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    job_id: int = 0
    study_version: int = 0


class DeliveryOperations(Operations):
    def complete_job(
        self,
        job_id: int,
        at: float,
        *,
        ok: bool,
        reason: str | None = None,
        objects: Sequence[ResultObject] = (),
        destinations: Sequence[str] = (),
        document: ResultDocument | None = None,
        detail: str | None = None,
    ) -> int:
        """Finish the job (processing -> done | failed) **and** record its pending deliveries, one per
        (destination, object), in one transaction; returns how many deliveries were recorded.

        Only the run that finishes the job records anything: a second run of the same job (a redelivery, an
        overlapping run) gets :class:`LedgerStateError` and its transaction changes nothing, so it can never
        add deliveries of its own; a run killed before the commit leaves the job ``processing`` with no
        delivery (its redelivery runs again). ``document`` (the job's SR) is kept on the job for a superseding
        SR to reference; ``detail`` becomes the ``job-result`` audit event.
        """

        def op(session: Session) -> int:
            job = finish_in(session, job_id, at, ok=ok, reason=reason)
            uid = job.study.study_instance_uid
            if document is not None:
                job.result_sop_class_uid = document.sop_class_uid
                job.result_series_instance_uid = document.series_instance_uid
                job.result_sop_instance_uid = document.sop_instance_uid
            if detail is not None:
                write_audit(session, "job-result", at, study_instance_uid=uid, detail=f"job {job_id}: {detail}")
            count = 0
            for obj in objects:
                for destination in destinations:
                    session.add(Delivery(job_id=job_id, destination=destination, sop_instance_uid=obj.sop_instance_uid,
                                         state=DeliveryState.PENDING, attempts=0, path=obj.path, updated_at=at))
                    write_audit(session, "delivery-pending", at, study_instance_uid=uid,
                                sop_instance_uid=obj.sop_instance_uid, detail=f"job {job_id} -> {destination}")
                    count += 1
            return count

        return self._run(op)

    def unreported_failures(self, since: float) -> list[str]:
        """Studies that failed since ``since`` without a job of their current version (the completeness check's
        force-complete deadline with action ``fail``): they are owed a failure SR (``failure_report_key``)."""

        def op(session: Session) -> list[str]:
            has_job = exists().where(Job.study_id == Study.id, Job.study_version == Study.version)
            query = (select(Study.study_instance_uid).where(Study.state == StudyState.FAILED,
                                                            Study.state_changed_at >= since, ~has_job)
                     .order_by(Study.id))
            return list(session.scalars(query))

        return self._run(op)

    def enqueue_failure_report(self, study_instance_uid: str, at: float) -> JobRecord | None:
        """A queued job (purpose ``failure-sr``) that only writes and sends the failure SR of a study that failed
        without being processed; the study stays ``failed`` with its reason. ``None`` when the study has a job of
        its current version already, or is not failed (nothing owed, or asked twice)."""

        def op(session: Session) -> JobRecord | None:
            study = load_study(session, study_instance_uid)
            if study is None or study.state is not StudyState.FAILED:
                return None
            if session.scalar(select(Job.id).where(Job.study_id == study.id,
                                                   Job.study_version == study.version)) is not None:
                return None
            digest = content_digest((i.sop_instance_uid, i.sha256) for s in study.series for i in s.instances)
            key = idempotency_key(study_instance_uid, f"{digest}\n{FAILURE_SR_PURPOSE}-v{study.version}")
            previous = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1))
            job = Job(study_id=study.id, study_version=study.version, idempotency_key=key, content_digest=digest,
                      state=JobState.QUEUED, forced=True, reason=study.reason, purpose=FAILURE_SR_PURPOSE,
                      supersedes_job_id=None if previous is None else previous.id, created_at=at, updated_at=at)
            session.add(job)
            session.flush()
            write_audit(session, "job-queued", at, study_instance_uid=study_instance_uid,
                        detail=f"job {job.id}, version {study.version}: failure SR of a study failed without "
                        f"processing ({study.reason})")
            return job_record_of(job)

        return self._run(op)

    def superseded_document(self, job_id: int) -> ResultDocument | None:
        """The SR a new result of job ``job_id`` replaces: the latest SR recorded by the jobs it supersedes
        (following ``supersedes_job_id`` back past jobs that recorded none); ``None`` for a first result."""

        def op(session: Session) -> ResultDocument | None:
            job = get_job(session, job_id)
            seen = {job.id}
            previous = job.supersedes_job_id
            while previous is not None and previous not in seen:
                seen.add(previous)
                earlier = get_job(session, previous)
                if earlier.result_sop_instance_uid and earlier.result_series_instance_uid \
                        and earlier.result_sop_class_uid:
                    return ResultDocument(earlier.study.study_instance_uid, earlier.result_series_instance_uid,
                                          earlier.result_sop_instance_uid, earlier.result_sop_class_uid,
                                          earlier.id, earlier.study_version)
                previous = earlier.supersedes_job_id
            return None

        return self._run(op)

    def record_delivery(
        self,
        job_id: int,
        destination: str,
        sop_instance_uid: str,
        state: DeliveryState,
        at: float,
        *,
        status: int | None = None,
        detail: str | None = None,
        path: str | None = None,
    ) -> DeliveryRecord:
        """Create or update the delivery of one result object to one destination (attempts counted).

        ``path`` is the result file the outbox sends; an update without one keeps the path recorded before.
        """

        def op(session: Session) -> DeliveryRecord:
            job = get_job(session, job_id)
            row = session.scalar(
                select(Delivery).where(
                    Delivery.job_id == job_id, Delivery.destination == destination,
                    Delivery.sop_instance_uid == sop_instance_uid,
                )
            )
            if row is None:
                row = Delivery(job_id=job_id, destination=destination, sop_instance_uid=sop_instance_uid, attempts=0)
                session.add(row)
            row.state = state
            if state is not DeliveryState.PENDING:
                row.attempts += 1
            row.last_status = status
            row.detail = detail
            if path is not None:
                row.path = path
            row.updated_at = at
            write_audit(session, f"delivery-{state.value}", at, study_instance_uid=job.study.study_instance_uid,
                        sop_instance_uid=sop_instance_uid, status=status, detail=f"job {job_id} -> {destination}")
            return DeliveryRecord(job_id, destination, sop_instance_uid, row.state, row.attempts, row.last_status,
                                  row.detail, row.path)

        return self._run(op)


# -- the outbox -------------------------------------------------------------------------------------------------


def _audit(session: Session, event: str, at: float, item: OutboxItem, status: int | None, detail: str) -> None:
    write_audit(session, event, at, study_instance_uid=item.study_instance_uid,
                sop_instance_uid=item.sop_instance_uid, status=status,
                detail=f"job {item.job_id} -> {item.destination}: {detail}")


def deliveries(
    repo: Operations, *, state: DeliveryState | None = None, job_id: int | None = None
) -> list[OutboxItem]:
    """Delivery rows in id order, optionally of one state and/or one job."""

    def op(session: Session) -> list[OutboxItem]:
        query = with_study_uid()
        if state is not None:
            query = query.where(Delivery.state == state)
        if job_id is not None:
            query = query.where(Delivery.job_id == job_id)
        return [outbox_item(row, uid) for row, uid in session.execute(query.order_by(Delivery.id))]

    return run(repo.ledger, op)


def due(repo: Operations, now: float, next_at: Callable[[int, float], float], limit: int = 100) -> list[OutboxItem]:
    """Pending rows whose next attempt time (``next_at(attempts, updated_at)``) has come, oldest first."""
    ready = [i for i in deliveries(repo, state=DeliveryState.PENDING) if i.attempts == 0
             or next_at(i.attempts, i.updated_at) <= now]
    return ready[:limit]


def claim(repo: Operations, item: OutboxItem, now: float) -> OutboxItem | None:
    """Count one attempt and take the row, unless another worker changed it since it was read."""

    def op(session: Session) -> bool:
        result = session.execute(
            update(Delivery)
            .where(Delivery.id == item.id, Delivery.state == DeliveryState.PENDING,
                   Delivery.attempts == item.attempts, Delivery.updated_at == item.updated_at)
            .values(attempts=item.attempts + 1, updated_at=now)
        )
        return getattr(result, "rowcount", 0) == 1

    if not run(repo.ledger, op):
        return None
    return replace(item, attempts=item.attempts + 1, updated_at=now)


def _finish(repo: Operations, item: OutboxItem, now: float, state: DeliveryState, status: int | None,
            event: str, detail: str) -> None:
    def op(session: Session) -> None:
        row = session.get(Delivery, item.id)
        if row is None:
            return
        row.state, row.last_status, row.updated_at = state, status, now
        _audit(session, event, now, item, status, detail)

    run(repo.ledger, op)


def mark_sent(repo: Operations, item: OutboxItem, now: float, status: int = 0) -> None:
    _finish(repo, item, now, DeliveryState.SENT, status, "delivery-sent", f"attempt {item.attempts}")


def mark_retry(repo: Operations, item: OutboxItem, now: float, status: int | None, error: str) -> None:
    _finish(repo, item, now, DeliveryState.PENDING, status, "delivery-retry", f"attempt {item.attempts}: {error}")


def mark_dead(repo: Operations, item: OutboxItem, now: float, status: int | None, error: str) -> None:
    _finish(repo, item, now, DeliveryState.FAILED, status, "delivery-dead-letter",
            f"given up after attempt {item.attempts}: {error}")


def resend(
    repo: Operations, now: float, *, delivery_id: int | None = None, job_id: int | None = None,
    destination: str | None = None,
) -> int:
    """Put dead letters (all, or those of one delivery / job / destination) back in the outbox with a fresh
    series of attempts; returns how many."""

    def op(session: Session) -> int:
        query = with_study_uid().where(Delivery.state == DeliveryState.FAILED)
        if delivery_id is not None:
            query = query.where(Delivery.id == delivery_id)
        if job_id is not None:
            query = query.where(Delivery.job_id == job_id)
        if destination is not None:
            query = query.where(Delivery.destination == destination)
        count = 0
        for row, uid in session.execute(query).all():
            item = outbox_item(row, uid)
            row.state, row.attempts, row.updated_at = DeliveryState.PENDING, 0, now
            _audit(session, "delivery-resend", now, item, None, f"after {item.attempts} attempt(s)")
            count += 1
        return count

    return run(repo.ledger, op)
