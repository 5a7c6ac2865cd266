"""The one way the ledger's operations run: each in one transaction, with the audit row written inside it.

:func:`run` opens a transaction, runs an operation in it, commits (rolls back on any exception) and retries
when a concurrent insert won a unique key (the operation then sees the winner's row). :func:`write_audit` appends
an ``audit_events`` row in the caller's transaction, clipped to the column sizes. Every part of the ledger
(intake, studies, jobs, deliveries, primary subtypes, audit) uses these two, through :class:`Operations` or
directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node.ledger.db import Ledger
from node.ledger.tables import AuditEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 3

# Built once: this runs inside every C-STORE handler, where building a statement costs more than running it.
_INSERT_AUDIT = insert(AuditEvent)


def run(ledger: Ledger, operation: Callable[[Session], T]) -> T:
    """Run ``operation`` in one transaction, retrying when a concurrent insert won a unique key."""
    for attempt in range(RETRIES):
        try:
            with ledger.session() as session:
                return operation(session)
        except IntegrityError:
            if attempt == RETRIES - 1:
                raise
            logger.debug("unique-key race in the ledger, retrying (attempt %d)", attempt + 1)
    raise AssertionError("unreachable")


def _clip(text: str | None, size: int) -> str | None:
    return None if text is None else text[:size]


def write_audit(
    session: Session,
    event: str,
    at: float,
    *,
    calling_ae_title: str | None = None,
    peer: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    status: int | None = None,
    detail: str | None = None,
) -> None:
    """Append one audit event in ``session``'s transaction (committed, or rolled back, with the change it records)."""
    session.connection().execute(_INSERT_AUDIT, audit_row(
        event, at, calling_ae_title=calling_ae_title, peer=peer, study_instance_uid=study_instance_uid,
        sop_instance_uid=sop_instance_uid, status=status, detail=detail))


def write_audits(session: Session, rows: list[dict[str, object]]) -> None:
    """Append several :func:`audit_row` events in one statement (an executemany)."""
    if rows:
        session.connection().execute(_INSERT_AUDIT, rows)


def audit_row(
    event: str,
    at: float,
    *,
    calling_ae_title: str | None = None,
    peer: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    status: int | None = None,
    detail: str | None = None,
) -> dict[str, object]:
    """The column values of one audit event."""
    return {
        "at": at,
        "event": event,
        "calling_ae_title": _clip(calling_ae_title, 16),
        "peer": _clip(peer, 64),
        "study_instance_uid": _clip(study_instance_uid, 64),
        "sop_instance_uid": _clip(sop_instance_uid, 64),
        "status": status,
        "detail": detail,
    }


class Operations:
    """What every part of :class:`node.ledger.repository.Repository` has: the ledger and its transaction runner.

    The outbox and primary-subtype functions take any :class:`Operations` (a ``Repository`` in practice).
    """

    ledger: Ledger

    def _run(self, operation: Callable[[Session], T]) -> T:
        return run(self.ledger, operation)
