"""Dispatch on the event: the listener judges the studies an association stored into once it ends.

:class:`ReadyDispatcher` is one daemon thread in the listener process. :meth:`ReadyDispatcher.schedule` (called
from an association's thread when it ends: it only queues, never blocks) asks for the studies to be judged
``settle_s`` later; the thread then runs :func:`node.jobs.runner.dispatch_ready` for just those studies: mark
ready, enqueue in the ledger, send the Celery task, the same idempotent path as the worker's periodic poll
(which stays, as a safety net). The two may race for a study; the ledger's idempotency key gives it to one.
An error (ledger or broker unreachable) is logged; the poll picks the study up later.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from node.config import Settings
from node.ledger.repository import Repository
from node.log import correlated

if TYPE_CHECKING:
    from node.jobs.completeness import CompletenessChecker

logger = logging.getLogger(__name__)

SendTask = Callable[[int, str, str, str], object]
#: judged this much after the settle time, so the study's quiet time has certainly reached it
MARGIN_S = 0.02


class ReadyDispatcher:
    """Judges scheduled studies after ``settle_s`` and dispatches the ready ones (see the module)."""

    def __init__(self, repository: Repository, checker: CompletenessChecker, send_task: SendTask, spool_dir: Path,
                 settle_s: float, clock: Callable[[], float] = time.time,
                 on_loaded: Callable[[], object] | None = None) -> None:
        self.repository = repository
        self.checker = checker
        self.send_task = send_task
        self.spool_dir = spool_dir
        self.settle_s = settle_s
        self.clock = clock
        self.on_loaded = on_loaded  # called by the thread once it has loaded the job layer
        self.dispatched = 0  # jobs this dispatcher queued (tests, logs)
        self.evaluations = 0  # judgements run (tests wait for one instead of sleeping)
        self._due: list[tuple[float, int, frozenset[str]]] = []
        self._count = 0
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ainode-ready-dispatcher", daemon=True)

    def start(self) -> ReadyDispatcher:
        self._thread.start()
        return self

    def schedule(self, studies: Iterable[str], delay_s: float | None = None) -> None:
        """Judge ``studies`` after ``delay_s`` (default ``settle_s``); returns at once."""
        wanted = frozenset(studies)
        if not wanted:
            return
        due = time.monotonic() + (self.settle_s if delay_s is None else delay_s) + MARGIN_S
        with self._wake:
            if self._stopped:
                return
            self._count += 1
            heapq.heappush(self._due, (due, self._count, wanted))
            self._wake.notify_all()

    def _next(self) -> frozenset[str] | None:
        """The studies due now (all entries due, merged), or None once stopped."""
        with self._wake:
            while not self._stopped:
                if self._due and self._due[0][0] <= time.monotonic():
                    studies: set[str] = set()
                    while self._due and self._due[0][0] <= time.monotonic():
                        studies |= heapq.heappop(self._due)[2]
                    return frozenset(studies)
                self._wake.wait(None if not self._due else max(0.0, self._due[0][0] - time.monotonic()))
            return None

    def _run(self) -> None:
        from node.jobs.runner import dispatch_ready  # the job layer's modules load with the thread

        if self.on_loaded is not None:
            try:
                self.on_loaded()
            except Exception:
                logger.exception("the dispatcher's on_loaded callback failed")
        while (studies := self._next()) is not None:
            try:
                with correlated("dispatch"):
                    jobs = dispatch_ready(self.repository, self.checker, self.clock(), self.send_task,
                                          self.spool_dir, only=studies)
                self.dispatched += len(jobs)
            except Exception as exc:  # noqa: BLE001 - the thread must live on; the periodic poll retries
                logger.error("dispatching %d study(ies) failed (the periodic poll retries): %s: %s", len(studies),
                             type(exc).__name__, exc)
            with self._wake:
                self.evaluations += 1
                self._wake.notify_all()

    def wait_evaluations(self, count: int, timeout_s: float) -> bool:
        """Whether at least ``count`` judgements have run within ``timeout_s`` (tests)."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            while self.evaluations < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
            return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (a dispatch in progress finishes first); scheduled studies are left to the poll."""
        with self._wake:
            self._stopped = True
            self._due.clear()
            self._wake.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)


def dispatcher_factory(settings: Settings, send_task: SendTask, *, on_loaded: Callable[[], object] | None = None,
                       ) -> Callable[[Repository, Callable[[], float]], ReadyDispatcher]:
    """What ``start_listener(dispatcher=...)`` takes: a listener's dispatcher, judging with the completeness check of
    ``settings`` and sending the process task with ``send_task`` (:func:`node.jobs.sender.process_sender`);
    ``on_loaded`` runs in its thread once the job layer is imported (a node process freezes its heap then:
    :mod:`node.heap`)."""

    def build(repository: Repository, clock: Callable[[], float]) -> ReadyDispatcher:
        from node.imaging.series_rules import load_rules
        from node.jobs.completeness import CompletenessChecker, CompletenessPolicy

        checker = CompletenessChecker(repository, load_rules(), CompletenessPolicy.from_settings(settings),
                                      settings.spool_dir)
        return ReadyDispatcher(repository, checker, send_task, settings.spool_dir.resolve(), settings.settle_s,
                               clock, on_loaded)

    return build
