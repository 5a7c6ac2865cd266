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
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class LedgerStateError(NodeError):
    """An operation was asked of a study or job in a state that does not allow it (a caller's bug or a race)."""

    default_message = "the study or job is not in a state that allows this operation"
