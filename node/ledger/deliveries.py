"""Deliveries: the job layer's record of each result object to send, and the outbox's operations on them.

A delivery row is one result object for one destination: ``path`` holds the file to send (rows written before
the column existed keep it in ``detail``, which is read instead while ``path`` is NULL), ``attempts`` the
attempts made in the current series (begun at ``first_attempt_at``), ``updated_at`` when the last attempt started
or ended, ``last_status`` / ``last_error`` the last DIMSE status and error in words, ``next_attempt_at`` when a
pending row is tried again. States (:class:`~node.ledger.states.DeliveryState`): ``pending`` (to send, or to
retry once its backoff has passed), ``sent`` (stored; with Storage Commitment, awaiting the PACS's commitment under
``commit_transaction_uid``), ``committed``, and the dead letters ``failed`` / ``commit-failed`` (given up, until
:func:`resend`). Rows are created only by :meth:`node.ledger.results.ResultOperations.complete_job`. Every
transition is audited (``delivery-pending``, ``-sent``, ``-committed``, ``-retry``, ``-dead-letter``,
``-resend``).

Claiming is a conditional update (attempts and ``updated_at`` unchanged since read), so two workers never send
the same due row twice in one backoff window; a worker that dies mid-send leaves the row pending, and it is
retried once its backoff has passed (at-least-once delivery; a PACS stores a resent SOP instance once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from node.ledger.jobs import get_job
from node.ledger.records import DeliveryRecord
from node.ledger.states import DEAD_LETTER_STATES, DeliveryState
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
    last_error: str | None = None
    first_attempt_at: float | None = None  # start of the current series of attempts (dead-letter delay)
    next_attempt_at: float | None = None  # when a pending row is tried again (None: due now / computed)
    commit_transaction_uid: str | None = None  # Storage Commitment asked under this Transaction UID
    commit_requested_at: float | None = None
    committed_at: float | None = None

    @property
    def awaiting_commitment(self) -> bool:
        return self.state is DeliveryState.SENT and self.commit_transaction_uid is not None


def file_of(row: Delivery) -> str | None:
    """The row's result file: ``path``, or ``detail`` for a row written before the ``path`` column existed."""
    return row.path if row.path is not None else row.detail


def outbox_item(row: Delivery, study_uid: str) -> OutboxItem:
    file = file_of(row)
    return OutboxItem(
        id=row.id, job_id=row.job_id, study_instance_uid=study_uid, destination=row.destination,
        sop_instance_uid=row.sop_instance_uid, path=Path(file) if file else None, state=row.state,
        attempts=row.attempts, updated_at=row.updated_at, last_status=row.last_status, last_error=row.last_error,
        first_attempt_at=row.first_attempt_at, next_attempt_at=row.next_attempt_at,
        commit_transaction_uid=row.commit_transaction_uid, commit_requested_at=row.commit_requested_at,
        committed_at=row.committed_at,
    )


def with_study_uid() -> Select[Delivery, str]:
    """Delivery rows with the Study Instance UID of their job."""
    return select(Delivery, Study.study_instance_uid).join(Job, Delivery.job_id == Job.id).join(Study)


class DeliveryOperations(Operations):
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

        For tests and tools only: the node creates delivery rows solely in the transaction that finishes the job
        (:meth:`node.ledger.results.ResultOperations.complete_job`).

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
    """Pending rows whose next attempt time has come, oldest first: ``next_attempt_at``, or for rows written
    before that column ``next_at(attempts, updated_at)``."""

    def is_due(item: OutboxItem) -> bool:
        if item.attempts == 0:
            return True
        when = item.next_attempt_at if item.next_attempt_at is not None else next_at(item.attempts, item.updated_at)
        return when <= now

    return [i for i in deliveries(repo, state=DeliveryState.PENDING) if is_due(i)][:limit]


def awaiting_commitment(repo: Operations, *, transaction_uid: str | None = None,
                        requested_before: float | None = None) -> list[OutboxItem]:
    """``sent`` rows waiting for the PACS's Storage Commitment result: of one transaction, and/or asked before a
    time (their wait has expired)."""

    def op(session: Session) -> list[OutboxItem]:
        query = with_study_uid().where(Delivery.state == DeliveryState.SENT,
                                       Delivery.commit_transaction_uid.is_not(None))
        if transaction_uid is not None:
            query = query.where(Delivery.commit_transaction_uid == transaction_uid)
        if requested_before is not None:
            query = query.where(Delivery.commit_requested_at < requested_before)
        return [outbox_item(row, uid) for row, uid in session.execute(query.order_by(Delivery.id))]

    return run(repo.ledger, op)


def claim(repo: Operations, item: OutboxItem, now: float) -> OutboxItem | None:
    """Count one attempt and take the row, unless another worker changed it since it was read; the first
    attempt of a series records when the series began."""

    def op(session: Session) -> bool:
        result = session.execute(
            update(Delivery)
            .where(Delivery.id == item.id, Delivery.state == DeliveryState.PENDING,
                   Delivery.attempts == item.attempts, Delivery.updated_at == item.updated_at)
            .values(attempts=item.attempts + 1, updated_at=now,
                    first_attempt_at=func.coalesce(Delivery.first_attempt_at, now))
        )
        return getattr(result, "rowcount", 0) == 1

    if not run(repo.ledger, op):
        return None
    return replace(item, attempts=item.attempts + 1, updated_at=now,
                   first_attempt_at=item.first_attempt_at if item.first_attempt_at is not None else now)


def _finish(repo: Operations, item: OutboxItem, now: float, state: DeliveryState, status: int | None,
            event: str, detail: str, *, error: str | None = None, next_attempt_at: float | None = None,
            transaction_uid: str | None = None, only_if: DeliveryState | None = None) -> bool:
    """Record one outcome; ``only_if``: only when the row is still in that state (and, for a commitment result,
    still waits on ``item``'s transaction). False when it changed meanwhile."""

    def op(session: Session) -> bool:
        row = session.get(Delivery, item.id)
        if row is None:
            return False
        if only_if is not None and (row.state is not only_if
                                    or row.commit_transaction_uid != item.commit_transaction_uid):
            return False
        row.state, row.last_status, row.updated_at = state, status, now
        row.last_error, row.next_attempt_at = error, next_attempt_at
        if state is DeliveryState.SENT:
            row.commit_transaction_uid = transaction_uid
            row.commit_requested_at = now if transaction_uid is not None else None
        elif state is DeliveryState.COMMITTED:
            row.committed_at = now
        else:
            row.commit_transaction_uid = row.commit_requested_at = None
        _audit(session, event, now, item, status, detail)
        return True

    return run(repo.ledger, op)


def mark_sent(repo: Operations, item: OutboxItem, now: float, status: int = 0, *,
              transaction_uid: str | None = None) -> None:
    """Stored by the PACS; with ``transaction_uid`` its Storage Commitment was asked and is awaited."""
    detail = f"attempt {item.attempts}" + (f"; storage commitment asked ({transaction_uid})" if transaction_uid
                                            else "")
    _finish(repo, item, now, DeliveryState.SENT, status, "delivery-sent", detail, transaction_uid=transaction_uid)


def mark_committed(repo: Operations, item: OutboxItem, now: float) -> bool:
    """The PACS committed the object (N-EVENT-REPORT success); False when the row no longer waits on it."""
    return _finish(repo, item, now, DeliveryState.COMMITTED, 0, "delivery-committed",
                   f"committed under transaction {item.commit_transaction_uid}", only_if=DeliveryState.SENT)


def mark_retry(repo: Operations, item: OutboxItem, now: float, status: int | None, error: str,
               next_attempt_at: float | None = None, *, only_if: DeliveryState | None = None) -> bool:
    """Failed attempt, tried again at ``next_attempt_at``."""
    return _finish(repo, item, now, DeliveryState.PENDING, status, "delivery-retry",
                   f"attempt {item.attempts}: {error}", error=error, next_attempt_at=next_attempt_at,
                   only_if=only_if)


def mark_dead(repo: Operations, item: OutboxItem, now: float, status: int | None, error: str, *,
              state: DeliveryState = DeliveryState.FAILED, only_if: DeliveryState | None = None) -> bool:
    """Dead letter (``failed``, or ``commit-failed`` when the PACS never committed it) until ``resend``."""
    return _finish(repo, item, now, state, status, "delivery-dead-letter",
                   f"given up after attempt {item.attempts}: {error}", error=error, only_if=only_if)


def resend(
    repo: Operations, now: float, *, delivery_id: int | None = None, job_id: int | None = None,
    destination: str | None = None,
) -> int:
    """Put dead letters (``failed`` and ``commit-failed``: all, or those of one delivery / job / destination) back
    in the outbox with a fresh series of attempts; returns how many."""

    def op(session: Session) -> int:
        query = with_study_uid().where(Delivery.state.in_(DEAD_LETTER_STATES))
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
            row.first_attempt_at = row.next_attempt_at = None
            row.commit_transaction_uid = row.commit_requested_at = None
            _audit(session, "delivery-resend", now, item, None, f"after {item.attempts} attempt(s)")
            count += 1
        return count

    return run(repo.ledger, op)
