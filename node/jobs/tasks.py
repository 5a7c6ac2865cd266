"""The node's Celery tasks: thin wiring around :mod:`node.jobs.runner`, taking ids and paths
(docs/engineering.md §3.5).

Each task sets the correlation id (``node.log.correlated``), opens the process's :class:`JobContext` and calls a
plain function that can be unit-tested without Celery:

* ``ainode.process_study`` -> :func:`node.jobs.runner.run_process_job`;
* ``ainode.poll_ready`` (periodic, celery beat) -> :func:`node.jobs.runner.dispatch_ready`;
* ``ainode.deliver`` -> :func:`node.delivery.outbox.deliver_pending`, which sends the due deliveries.

Delivery is at least once (``acks_late`` + ``reject_on_worker_lost``): a redelivered job that is ``done`` or
``failed`` in the ledger is skipped; one still ``processing`` (its worker died) is run again. Only
:class:`TransientError` is retried (exponential backoff with full jitter, ``task_max_retries``); ledger database
errors count as transient (the database may be restarting). Settings arrive once per worker process
(:func:`apply_settings`, called by :func:`node.jobs.celery_app.configure` before the pool forks); nothing here
reads the environment.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery import Task, shared_task
from celery.signals import beat_embedded_init, task_failure, worker_ready, worker_shutdown, worker_shutting_down
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import SQLAlchemyError

from node.config import Settings
from node.errors import NodeError, TransientError
from node.jobs.context import bind_settings, bound_settings, fail_job, job_context, ledger_errors_are_transient
from node.jobs.lifetime import exit_with_parent
from node.jobs.recovery import (
    Heartbeat,
    fail_timed_out,
    queued_job_ids,
    recover_stalled,
    redispatch_orphans,
    resend_unsent,
)
from node.jobs.runner import dispatch_ready, run_process_job
from node.jobs.warm import job_in_this_process  # also connects the preload to the worker's signals
from node.ledger import leases
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.log import correlated, study_key
from node.vocabulary import DELIVER_TASK, POLL_TASK, PROCESS_TASK, PURGE_TASK

logger = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 900


# -- the worker's main process: lease heartbeat, hard time limits, --recover ---------------------------------


@functools.cache
def _main_repository(pid: int) -> Repository:
    """The worker main process's own ledger connection pool (keyed by pid: never one a forked child inherited).

    Pool processes use :func:`job_context`, opened after they fork; this one is only used by the main
    process's heartbeat thread and signal handlers. A child forked while it exists drops the inherited pool
    without closing the parent's connections (SQLAlchemy's recipe for ``fork``).
    """
    settings = bound_settings()
    with ledger_errors_are_transient():
        ledger = Ledger.open(settings.effective_database_url)
    os.register_at_fork(after_in_child=lambda: ledger.engine.dispose(close=False))
    return Repository(ledger, settings.late_instance_policy)


def held_process_tasks() -> list[str]:
    """The task ids of the ``ainode.process_study`` requests this worker holds: running, or reserved (a retry
    waiting for its countdown, a message waiting for a free pool process)."""
    from celery.worker import state

    for _ in range(3):
        try:
            requests = [*state.active_requests, *state.reserved_requests,
                        *getattr(state, "scheduled_requests", ())]  # a retry's countdown (Celery >= 5.5)
        except RuntimeError:  # the main thread changed the set while we copied it: try again
            continue
        return [r.id for r in requests if r.name == PROCESS_TASK and r.id]
    return []


_heartbeat: list[tuple[int, Heartbeat]] = []  # (pid of the main process, its heartbeat)


def _own_heartbeat() -> Heartbeat | None:
    return next((beat for pid, beat in _heartbeat if pid == os.getpid()), None)


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_kwargs: Any) -> None:
    """In the worker's main process: start the lease heartbeat; with ``--recover``, re-send orphaned jobs."""
    settings = bound_settings()
    try:
        repo = _main_repository(os.getpid())
    except TransientError as exc:
        logger.error("the ledger cannot be reached: no lease heartbeat in this worker (%s)", exc.message)
        return
    _heartbeat[:] = [(os.getpid(), Heartbeat(repo, held_process_tasks, settings.job_heartbeat_s).start())]
    if settings.recover_orphans:
        _recover_orphans(sender, repo, settings)


def _recover_orphans(sender: Any, repo: Repository, settings: Settings) -> None:
    """``ainode worker --recover``: on the embedded broker, re-send jobs a killed worker took with it."""
    options = sender.app.conf.broker_transport_options if sender is not None else {}
    folder = options.get("data_folder_in")
    if not folder:
        logger.warning("--recover only applies to the embedded broker; Redis redelivers by visibility timeout")
        return
    with correlated("recover"), ledger_errors_are_transient():
        redispatch_orphans(repo, settings.spool_dir, queued_job_ids(Path(folder)), _send_process,
                           settings=settings)


@worker_shutting_down.connect
def _on_worker_shutting_down(**_kwargs: Any) -> None:
    """A warm shutdown began: the runs it interrupts are not deaths of their process (see :class:`Heartbeat`)."""
    beat = _own_heartbeat()
    if beat is not None:
        beat.stopping()


@worker_shutdown.connect
def _on_worker_shutdown(**_kwargs: Any) -> None:
    beat = _own_heartbeat()
    if beat is not None:
        beat.stop()


@task_failure.connect
def _on_task_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                     **_kwargs: Any) -> None:
    """The main process killed a run at the hard time limit: fail its job now (it would stay processing)."""
    if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "name", None) != PROCESS_TASK or not task_id:
        return
    if _own_heartbeat() is None:  # not the worker's main process
        return
    settings = bound_settings()
    try:
        with ledger_errors_are_transient():
            fail_timed_out(_main_repository(os.getpid()), task_id, time.time(), settings.hard_time_limit)
    except TransientError as exc:  # the recovery sweep fails it later
        logger.error("a job killed at the hard time limit could not be marked failed: %s", exc.message)


@beat_embedded_init.connect
def _on_beat_embedded_init(**_kwargs: Any) -> None:
    """``worker --beat`` runs beat in a child process: it must die with the worker, never outlive it."""
    exit_with_parent()  # Celery arms its pool processes the same way, not the beat process


# -- tasks ---------------------------------------------------------------------------------------------------


class NodeTask(Task):  # type: ignore[type-arg]
    """Retries with the deployment's policy: Celery's autoretry captures ``retry_backoff`` when the task is
    declared (before any settings exist), so the delay and the retry count are recomputed here, per call, from
    the worker's settings: exponential backoff from ``retry_backoff`` with full jitter, at most
    :data:`RETRY_BACKOFF_MAX_S`, ``task_max_retries`` retries."""

    def retry(self, args: Any = None, kwargs: Any = None, exc: Any = None, throw: bool = True, eta: Any = None,
              countdown: Any = None, max_retries: Any = None, **options: Any) -> Any:
        settings = bound_settings()
        delay = get_exponential_backoff_interval(factor=max(1, round(settings.retry_backoff)),
                                                 retries=self.request.retries, maximum=RETRY_BACKOFF_MAX_S,
                                                 full_jitter=True)
        return super().retry(args, kwargs, exc, throw, eta, countdown=delay,
                             max_retries=settings.task_max_retries, **options)


_RETRY_POLICY: dict[str, Any] = {
    "base": NodeTask,
    "autoretry_for": (TransientError,),
    "retry_backoff": True,  # the delay itself is NodeTask.retry's
    "max_retries": Settings.task_max_retries,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


def _give_up_if_last(task: Task[Any, Any], job_id: int, exc: TransientError) -> None:
    """On the last retry, a transient error becomes the job's failure (else it would stay processing)."""
    if task.request.retries >= (task.max_retries or 0):
        logger.error("giving up after %d retries: %s", task.request.retries, exc.message)
        try:
            with ledger_errors_are_transient():
                fail_job(job_context(), job_id, f"gave up after {task.request.retries} retries: {exc.message}")
        except TransientError:
            logger.error("job %d could not be marked failed: the ledger is unreachable", job_id)
    else:
        logger.warning("temporary failure (attempt %d): %s", task.request.retries + 1, exc.message)


def _retry_window(task: Task[Any, Any], settings: Settings) -> float:
    """The longest a retry of ``task`` can wait (its countdown is drawn below this), plus the stale period."""
    backoff: float = float(getattr(task, "retry_backoff", 1) or 1) * 2.0 ** int(task.request.retries or 0)
    return min(float(RETRY_BACKOFF_MAX_S), backoff) + settings.job_stale_after_s


def _end_attempt(repo: Repository, job_id: int, holder: str, at: float, *, alive_until: float | None = None) -> None:
    """Record the end of a run; a ledger error here is logged (it must not hide the run's own outcome)."""
    try:
        leases.end_attempt(repo, job_id, holder, at, alive_until=alive_until)
    except (SQLAlchemyError, NodeError) as exc:
        logger.warning("the end of the run of job %d could not be recorded: %s", job_id, exc)


@shared_task(bind=True, name=PROCESS_TASK, **_RETRY_POLICY)
def process_study_task(self: Task[Any, Any], job_id: int, study_instance_uid: str, study_dir: str,
                       out_dir: str) -> str:
    with correlated(job=job_id, study=study_key(study_instance_uid)):
        try:
            with ledger_errors_are_transient():
                ctx = job_context()
                holder = self.request.id or f"local-{job_id}-{os.getpid()}"
                settings = ctx.settings
                claim = leases.claim_job(ctx.repo, job_id, holder, ctx.clock(),
                                         stale_after_s=settings.job_stale_after_s,
                                         max_redeliveries=settings.job_max_redeliveries)
                if claim.outcome is leases.ClaimOutcome.HELD:
                    logger.warning("job %d is held by a live run of another message: this one is dropped", job_id)
                    return "skipped"
                if claim.outcome is leases.ClaimOutcome.CAPPED:
                    logger.error("job %d failed: %s", job_id, claim.reason)
                    return "failed"
                if claim.outcome is leases.ClaimOutcome.FINISHED:
                    logger.info("job %d is already finished: nothing to do", job_id)
                    return "skipped"
                if claim.worker_deaths:
                    logger.warning("job %d: run %d, after %d death(s) of the process running it (at most %d)",
                                   job_id, claim.attempts, claim.worker_deaths, settings.job_max_redeliveries)
                else:
                    logger.info("job %d: run %d", job_id, claim.attempts)
                alive_until: float | None = None
                try:
                    with job_in_this_process(job_id):
                        return run_process_job(ctx, job_id, study_instance_uid, Path(study_dir), Path(out_dir),
                                               queue_delivery=deliver_task.delay, worker=self.request.hostname)
                except TransientError:
                    alive_until = ctx.clock() + _retry_window(self, settings)  # the retry holds the lease
                    raise
                finally:  # also on SystemExit (a stop): only a run whose process dies leaves running_since set
                    _end_attempt(ctx.repo, job_id, holder, ctx.clock(), alive_until=alive_until)
        except TransientError as exc:
            _give_up_if_last(self, job_id, exc)
            raise


@shared_task(name=DELIVER_TASK, **_RETRY_POLICY)
def deliver_task(job_id: int | None = None) -> int:
    """Send the due deliveries (all of them: the outbox orders and backs off); ``job_id`` only tags the logs."""
    from node.delivery.outbox import OutboxPolicy, deliver_pending

    with correlated("deliver", job=job_id), ledger_errors_are_transient():
        now = time.time()
        ctx = job_context()  # the settings give each destination's calling AE, TLS, commitment and the schedule
        outcomes = deliver_pending(ctx.repo, now, policy=OutboxPolicy.from_settings(ctx.settings))
        retry_at = [o.next_attempt_at for o in outcomes if o.next_attempt_at is not None]
        if retry_at:  # a peer is down: come back when its backoff ends (the periodic beat task also does)
            deliver_task.apply_async((job_id,), countdown=max(1.0, min(retry_at) - now))
        return len(outcomes)


@shared_task(name=POLL_TASK, **_RETRY_POLICY)
def poll_ready_task() -> int:
    """Periodic (celery beat): move complete studies to ready and dispatch each one exactly once."""
    from node.imaging.series_rules import load_rules
    from node.jobs.completeness import CompletenessChecker, CompletenessPolicy

    with correlated("poll"), ledger_errors_are_transient():
        ctx = job_context()
        checker = CompletenessChecker(ctx.repo, load_rules(), CompletenessPolicy.from_settings(ctx.settings),
                                      ctx.settings.spool_dir)
        jobs = dispatch_ready(ctx.repo, checker, time.time(), _send_process, ctx.options.spool_dir)
        recover_stalled(ctx.repo, ctx.options.spool_dir, _send_process, time.time(), ctx.settings)
        resend_unsent(ctx.repo, ctx.options.spool_dir, _send_process, time.time(), ctx.settings)
        return len(jobs)


@shared_task(name=PURGE_TASK, **_RETRY_POLICY)
def purge_expired_task() -> int:
    """Periodic (celery beat, hourly, only with ``retention_days`` set): retention (:mod:`node.retention`)."""
    from node.retention import purge

    with correlated("purge"), ledger_errors_are_transient():
        ctx = job_context()
        days = ctx.settings.retention_days
        if days is None:  # a message sent before the setting was removed
            return 0
        return len(purge(ctx.repo, ctx.settings.spool_dir, older_than_s=days * 86400.0,
                         results=ctx.settings.retention_results))


def _send_process(job_id: int, study_instance_uid: str, study_dir: str, out_dir: str) -> None:
    process_study_task.delay(job_id, study_instance_uid, study_dir, out_dir)


def apply_settings(settings: Settings) -> None:
    """Bind the worker's settings; the retry delay and count are computed per retry by :class:`NodeTask`."""
    bind_settings(settings)
    for task in (process_study_task, deliver_task, poll_ready_task, purge_expired_task):
        task.max_retries = settings.task_max_retries  # read by _give_up_if_last; the delay is NodeTask's
