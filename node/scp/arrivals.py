"""Which studies each open association stores into, kept in the ledger, and what happens when it ends.

The listener may run as several processes on one port, so "an association is still storing into this study" is
recorded in the ledger (:mod:`node.ledger.associations`): :meth:`Arrivals.stored` adds a row at an association's
first C-STORE of a study (before the instance is recorded, so the study never looks finished while it is being
sent), and :func:`on_association_end` (EVT_RELEASED, EVT_ABORTED, EVT_CONN_CLOSE: whichever comes first; the
others find nothing left) removes the association's rows and hands its studies to the dispatcher, which judges
them after ``settle_s`` (:mod:`node.jobs.dispatcher`). Ledger errors are logged, never raised into an
association: the quiet period and the periodic poll still decide then.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from node.ledger.repository import Repository

logger = logging.getLogger(__name__)

#: how long an association's first C-STORE of a study waits for its open row: the row is written by one thread per
#: process, in order; a ledger that is locked or slow (the group commit is then behind too) must not stall the
#: association, whose instances are durable in the spool: after this, it goes on and the row follows
OPEN_WAIT_S = 2.0
#: how long the end of an association waits for its open rows to be written before it deletes them (no orphan row)
END_WAIT_S = 30.0


class StudyDispatcher(Protocol):
    """What the listener needs of the job layer's dispatcher (:class:`node.jobs.dispatcher.ReadyDispatcher`): the
    listener does not import the job layer; the command that wires the node injects it (:data:`DispatcherFactory`)."""

    def schedule(self, studies: Iterable[str], delay_s: float | None = None) -> None: ...

    def start(self) -> object: ...

    def stop(self) -> None: ...


#: builds a listener's dispatcher from its ledger repository and clock
DispatcherFactory = Callable[[Repository, Callable[[], float]], StudyDispatcher]


@dataclass
class _Open:
    association: object  # the pynetdicom Association (kept to tell a reused id() apart)
    key: str
    studies: set[str] = field(default_factory=set)
    writes: list[Future[None]] = field(default_factory=list)


class Arrivals:
    """The studies each association of this process has stored into; thread-safe (one thread per association)."""

    def __init__(self, repository: Repository, clock: Callable[[], float],
                 on_end: Callable[[list[str]], None] | None = None) -> None:
        self.repository = repository
        self.clock = clock
        self.on_end = on_end
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-associations")

    def stored(self, association: object, study_instance_uid: str, calling_ae_title: str) -> None:
        """An instance of the study arrives on ``association``: record the pair in the ledger the first time."""
        with self._lock:
            entry = self._open.get(id(association))
            if entry is None or entry.association is not association:
                entry = self._open[id(association)] = _Open(association, uuid.uuid4().hex)
            if study_instance_uid in entry.studies:
                return
            entry.studies.add(study_instance_uid)
            write = self._writer.submit(self._record_open, entry.key, study_instance_uid, self.clock(),
                                        calling_ae_title)
            entry.writes.append(write)
        try:
            write.result(OPEN_WAIT_S)
        except FutureTimeout:
            logger.warning("the ledger is slow: an open association is recorded in the background")

    def _record_open(self, key: str, study_instance_uid: str, at: float, calling_ae_title: str) -> None:
        try:
            self.repository.association_opened(key, study_instance_uid, at, calling_ae_title=calling_ae_title)
        except SQLAlchemyError as exc:
            logger.error("an open association could not be recorded in the ledger: %s", exc.__class__.__name__)

    def ended(self, association: object) -> list[str]:
        """The association ended: remove its rows; the studies it stored into (none the second time)."""
        with self._lock:
            entry = self._open.get(id(association))
            if entry is None or entry.association is not association:
                return []
            del self._open[id(association)]
        for write in entry.writes:  # its rows are written before they are deleted: no row outlives it
            try:
                write.result(END_WAIT_S)
            except FutureTimeout:
                logger.error("an open association was not recorded within %g s of its end", END_WAIT_S)
        try:
            self.repository.association_ended(entry.key)
        except SQLAlchemyError as exc:  # the rows age out (force_complete_s) or die with this process
            logger.error("the end of an association could not be recorded in the ledger: %s",
                         exc.__class__.__name__)
        return sorted(entry.studies)

    def open_studies(self) -> set[str]:
        with self._lock:
            return {uid for entry in self._open.values() for uid in entry.studies}



def on_association_end(arrivals: Arrivals | None, association: object) -> list[str]:
    """The release path (EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE), called once the group commit has flushed
    (:func:`node.scp.handlers.association_ended`): forget the association's open rows, and hand its studies to the
    dispatcher; the studies (none when it stored nothing or was seen already)."""
    if arrivals is None:
        return []
    studies = arrivals.ended(association)
    if studies and arrivals.on_end is not None:
        arrivals.on_end(studies)
    return studies

