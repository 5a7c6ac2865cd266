"""The outbox's operations on the ledger's ``deliveries`` table, one transaction each (no schema change).

A delivery row is one result object for one destination: ``detail`` holds the file's path (as the job layer
records it), ``attempts`` the attempts made in the current series, ``updated_at`` when the last attempt started
or ended, ``last_status`` the last DIMSE status. States: ``pending`` (to send, or to retry once its backoff has
passed), ``sent``, ``failed`` (dead letter: given up, until :func:`resend`). Every transition is audited
(``delivery-sent``, ``delivery-retry``, ``delivery-dead-letter``, ``delivery-resend``).

Claiming is a conditional update (attempts and ``updated_at`` unchanged since read), so two workers never send
the same due row twice in one backoff window; a worker that dies mid-send leaves the row pending, and it is
retried once its backoff has passed (at-least-once delivery; a PACS stores a resent SOP instance once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node.ledger.repository import Repository
from node.ledger.tables import AuditEvent, Delivery, DeliveryState, Job, Study


@dataclass(frozen=True)
class OutboxItem:
    """One delivery row, as the outbox sees it."""

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


def _item(row: Delivery, study_uid: str) -> OutboxItem:
    return OutboxItem(
        id=row.id, job_id=row.job_id, study_instance_uid=study_uid, destination=row.destination,
        sop_instance_uid=row.sop_instance_uid, path=Path(row.detail) if row.detail else None, state=row.state,
        attempts=row.attempts, updated_at=row.updated_at, last_status=row.last_status,
    )


def _audit(session: Session, event: str, at: float, item: OutboxItem, status: int | None, detail: str) -> None:
    session.add(AuditEvent(at=at, event=event, study_instance_uid=item.study_instance_uid[:64],
                           sop_instance_uid=item.sop_instance_uid[:64], status=status,
                           detail=f"job {item.job_id} -> {item.destination}: {detail}"))


def deliveries(
    repo: Repository, *, state: DeliveryState | None = None, job_id: int | None = None
) -> list[OutboxItem]:
    """Delivery rows in id order, optionally of one state and/or one job."""
    with repo.ledger.session() as session:
        query = select(Delivery, Study.study_instance_uid).join(Job, Delivery.job_id == Job.id).join(Study)
        if state is not None:
            query = query.where(Delivery.state == state)
        if job_id is not None:
            query = query.where(Delivery.job_id == job_id)
        return [_item(row, uid) for row, uid in session.execute(query.order_by(Delivery.id))]


def due(repo: Repository, now: float, next_at: Callable[[int, float], float], limit: int = 100) -> list[OutboxItem]:
    """Pending rows whose next attempt time (``next_at(attempts, updated_at)``) has come, oldest first."""
    ready = [i for i in deliveries(repo, state=DeliveryState.PENDING) if i.attempts == 0
             or next_at(i.attempts, i.updated_at) <= now]
    return ready[:limit]


def claim(repo: Repository, item: OutboxItem, now: float) -> OutboxItem | None:
    """Count one attempt and take the row, unless another worker changed it since it was read."""
    with repo.ledger.session() as session:
        result = session.execute(
            update(Delivery)
            .where(Delivery.id == item.id, Delivery.state == DeliveryState.PENDING,
                   Delivery.attempts == item.attempts, Delivery.updated_at == item.updated_at)
            .values(attempts=item.attempts + 1, updated_at=now)
        )
        if getattr(result, "rowcount", 0) != 1:
            return None
    return replace(item, attempts=item.attempts + 1, updated_at=now)


def _finish(repo: Repository, item: OutboxItem, now: float, state: DeliveryState, status: int | None,
            event: str, detail: str) -> None:
    with repo.ledger.session() as session:
        row = session.get(Delivery, item.id)
        if row is None:
            return
        row.state, row.last_status, row.updated_at = state, status, now
        _audit(session, event, now, item, status, detail)


def mark_sent(repo: Repository, item: OutboxItem, now: float, status: int = 0) -> None:
    _finish(repo, item, now, DeliveryState.SENT, status, "delivery-sent", f"attempt {item.attempts}")


def mark_retry(repo: Repository, item: OutboxItem, now: float, status: int | None, error: str) -> None:
    _finish(repo, item, now, DeliveryState.PENDING, status, "delivery-retry", f"attempt {item.attempts}: {error}")


def mark_dead(repo: Repository, item: OutboxItem, now: float, status: int | None, error: str) -> None:
    _finish(repo, item, now, DeliveryState.FAILED, status, "delivery-dead-letter",
            f"given up after attempt {item.attempts}: {error}")


def resend(
    repo: Repository, now: float, *, delivery_id: int | None = None, job_id: int | None = None,
    destination: str | None = None,
) -> int:
    """Put dead letters (all, or those of one delivery / job / destination) back in the outbox with a fresh
    series of attempts; returns how many."""
    with repo.ledger.session() as session:
        query = (select(Delivery, Study.study_instance_uid).join(Job, Delivery.job_id == Job.id).join(Study)
                 .where(Delivery.state == DeliveryState.FAILED))
        if delivery_id is not None:
            query = query.where(Delivery.id == delivery_id)
        if job_id is not None:
            query = query.where(Delivery.job_id == job_id)
        if destination is not None:
            query = query.where(Delivery.destination == destination)
        count = 0
        for row, uid in session.execute(query).all():
            item = _item(row, uid)
            row.state, row.attempts, row.updated_at = DeliveryState.PENDING, 0, now
            _audit(session, "delivery-resend", now, item, None, f"after {item.attempts} attempt(s)")
            count += 1
        return count
