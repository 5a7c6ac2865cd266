"""The audit trail: events appended by the node's callers (association rejected, C-ECHO, web actions...) and read
back in order. The ledger's own operations write their events with :func:`node.ledger.transaction.write_audit`
inside the transaction of the change they record."""

from __future__ import annotations

from typing import Unpack

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.ledger.records import AuditRecord
from node.ledger.tables import AuditEvent
from node.ledger.transaction import AuditFields, Operations, write_audit


def audit_record_of(row: AuditEvent) -> AuditRecord:
    return AuditRecord(row.at, row.event, row.calling_ae_title, row.peer, row.study_instance_uid,
                       row.sop_instance_uid, row.status, row.detail)


class AuditOperations(Operations):
    def audit(self, event: str, at: float, **fields: Unpack[AuditFields]) -> None:
        """Append one audit event (association rejected, C-ECHO, duplicate kept, ...)."""
        self._run(lambda session: write_audit(session, event, at, **fields))

    def latest_event_times(self, event: str) -> dict[str, float]:
        """Study Instance UID -> when ``event`` last happened to that study (one query; e.g. ``study-purged``)."""

        def op(session: Session) -> dict[str, float]:
            query = (select(AuditEvent.study_instance_uid, func.max(AuditEvent.at))
                     .where(AuditEvent.event == event, AuditEvent.study_instance_uid.is_not(None))
                     .group_by(AuditEvent.study_instance_uid))
            return {str(uid): float(at) for uid, at in session.execute(query)}

        return self._run(op)

    def audit_trail(self, study_instance_uid: str | None = None) -> list[AuditRecord]:
        """Audit events in order, for one study or (``None``) all of them."""

        def op(session: Session) -> list[AuditRecord]:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if study_instance_uid is not None:
                query = query.where(AuditEvent.study_instance_uid == study_instance_uid)
            return [audit_record_of(e) for e in session.scalars(query)]

        return self._run(op)
