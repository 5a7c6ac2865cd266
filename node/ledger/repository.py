"""The operations the node performs on the ledger, each one transaction, returning plain frozen records.

Nothing outside ``node.ledger`` touches ORM objects: callers get the frozen records of ``records.py``
(:class:`StudySnapshot`, :class:`JobRecord`...), re-exported here.
Every state change is guarded (the expected current state is checked inside the transaction) and audited,
so calling an operation twice, or from two processes, never produces two jobs for one study version.

:class:`Repository` is composed of one part per kind of record, each in its module: ``intake.py`` (received
instances), ``studies.py`` (snapshots, ready / failed), ``jobs.py``, ``deliveries.py`` (with the outbox's
functions), ``results.py`` (finishing a job with its deliveries), ``audit.py`` and ``associations.py`` (the
associations still open, per study); all of them, and
``primary.py``, run in ``transaction.py``'s one transaction runner and write the audit trail with its one writer.
"""

from __future__ import annotations

from node.config import LateInstancePolicy
from node.ledger.associations import AssociationOperations
from node.ledger.audit import AuditOperations
from node.ledger.db import Ledger
from node.ledger.deliveries import DeliveryOperations
from node.ledger.intake import IntakeOperations
from node.ledger.jobs import JobOperations
from node.ledger.records import (
    AuditRecord,
    DeliveryRecord,
    InstanceHeader,
    JobRecord,
    KnownInstance,
    ReceiveOutcome,
    RecordedInstance,
    SeriesSnapshot,
    StudySnapshot,
    WrittenFile,
    content_digest,
    idempotency_key,
)
from node.ledger.results import ResultOperations
from node.ledger.states import LedgerStateError
from node.ledger.studies import StudyOperations

__all__ = [  # the records are re-exported: callers import everything ledger-related from here
    "AuditRecord", "DeliveryRecord", "InstanceHeader", "JobRecord", "KnownInstance", "LedgerStateError",
    "ReceiveOutcome", "RecordedInstance", "Repository", "SeriesSnapshot", "StudySnapshot", "WrittenFile",
    "content_digest", "idempotency_key",
]


class Repository(IntakeOperations, StudyOperations, JobOperations, DeliveryOperations, ResultOperations,
                 AuditOperations, AssociationOperations):
    """The ledger operations of the listener, the completeness check and the job layer."""

    def __init__(self, ledger: Ledger, late_policy: LateInstancePolicy = LateInstancePolicy.RERUN) -> None:
        self.ledger = ledger
        self.late_policy = late_policy
