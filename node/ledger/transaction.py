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
from typing import TypedDict, TypeVar, Unpack

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


class AuditFields(TypedDict, total=False):
    """The optional columns of an audit event."""

    calling_ae_title: str | None
    peer: str | None
    study_instance_uid: str | None
    sop_instance_uid: str | None
    status: int | None
    detail: str | None


def write_audit(session: Session, event: str, at: float, **fields: Unpack[AuditFields]) -> None:
    """Append one audit event in ``session``'s transaction (committed, or rolled back, with the change it records)."""
    session.connection().execute(_INSERT_AUDIT, audit_row(event, at, **fields))


def write_audits(session: Session, rows: list[dict[str, object]]) -> None:
    """Append several :func:`audit_row` events in one statement (an executemany)."""
    if rows:
        session.connection().execute(_INSERT_AUDIT, rows)


def audit_row(event: str, at: float, **fields: Unpack[AuditFields]) -> dict[str, object]:
    """The column values of one audit event (the text columns clipped to their sizes)."""
    return {
        "at": at,
        "event": event,
        "calling_ae_title": _clip(fields.get("calling_ae_title"), 16),
        "peer": _clip(fields.get("peer"), 64),
        "study_instance_uid": _clip(fields.get("study_instance_uid"), 64),
        "sop_instance_uid": _clip(fields.get("sop_instance_uid"), 64),
        "status": fields.get("status"),
        "detail": fields.get("detail"),
    }


class Operations:
    """What every part of :class:`node.ledger.repository.Repository` has: the ledger and its transaction runner.

    The outbox and primary-subtype functions take any :class:`Operations` (a ``Repository`` in practice).
    """

    ledger: Ledger

    def _run(self, operation: Callable[[Session], T]) -> T:
        return run(self.ledger, operation)
