"""The states of the ledger's records, and the error of an operation a state does not allow.

Code outside :mod:`node.ledger` imports the states from here (never the ORM tables of ``tables.py``).
"""

from __future__ import annotations

import enum

from node.errors import NodeError


class StudyState(enum.StrEnum):
    """receiving -> ready -> queued -> processing -> done | failed (see ``docs/listener.md``)."""

    RECEIVING = "receiving"
    READY = "ready"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


#: States in which a new instance is "late": processing of the study has been handed to the job layer.
LATE_STATES = frozenset({StudyState.QUEUED, StudyState.PROCESSING, StudyState.DONE, StudyState.FAILED})


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


#: ``jobs.purpose`` of a job that only writes and sends the failure SR of a study failed without processing.
FAILURE_SR_PURPOSE = "failure-sr"


class DeliveryState(enum.StrEnum):
    """pending -> sent (-> committed, with Storage Commitment) | failed | commit-failed (dead letters)."""

    PENDING = "pending"  # to send, or to retry once its backoff has passed
    SENT = "sent"  # stored by the PACS (C-STORE success); with Storage Commitment: awaiting its commitment
    FAILED = "failed"  # dead letter: refused, or still failing at the dead-letter delay
    COMMITTED = "committed"  # the PACS committed to keep it (Storage Commitment N-EVENT-REPORT)
    COMMIT_FAILED = "commit-failed"  # dead letter: the PACS did not commit it by the dead-letter delay


#: Delivery states after which nothing more happens (until ``ainode resend`` for the two dead-letter states).
FINAL_DELIVERY_STATES = frozenset({DeliveryState.COMMITTED, DeliveryState.FAILED, DeliveryState.COMMIT_FAILED})
DEAD_LETTER_STATES = frozenset({DeliveryState.FAILED, DeliveryState.COMMIT_FAILED})


class LedgerStateError(NodeError):
    """An operation was asked of a study or job in a state that does not allow it (a caller's bug or a race)."""

    default_message = "the study or job is not in a state that allows this operation"
