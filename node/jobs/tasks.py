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

import logging
import time
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready
from celery.utils.time import get_exponential_backoff_interval

from node.config import Settings
from node.errors import TransientError
from node.jobs.context import bind_settings, bound_settings, fail_job, job_context, ledger_errors_are_transient
from node.jobs.recovery import queued_job_ids, redispatch_orphans
from node.jobs.runner import dispatch_ready, run_process_job
from node.log import correlated, study_key
from node.vocabulary import DELIVER_TASK, POLL_TASK, PROCESS_TASK

logger = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 900


@worker_ready.connect
def _recover_orphans(sender: Any = None, **_kwargs: Any) -> None:
    """``ainode worker --recover``: on the embedded broker, re-send jobs a killed worker took with it."""
    if not bound_settings().recover_orphans:
        return
    options = sender.app.conf.broker_transport_options if sender is not None else {}
    folder = options.get("data_folder_in")
    if not folder:
        logger.warning("--recover only applies to the embedded broker; Redis redelivers by visibility timeout")
        return
    with correlated("recover"), ledger_errors_are_transient():
        ctx = job_context()
        redispatch_orphans(ctx.repo, ctx.options.spool_dir, queued_job_ids(Path(folder)), _send_process)


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


@shared_task(bind=True, name=PROCESS_TASK, **_RETRY_POLICY)
def process_study_task(self: Task[Any, Any], job_id: int, study_instance_uid: str, study_dir: str,
                       out_dir: str) -> str:
    with correlated(job=job_id, study=study_key(study_instance_uid)):
        try:
            with ledger_errors_are_transient():
                return run_process_job(job_context(), job_id, study_instance_uid, Path(study_dir), Path(out_dir),
                                       queue_delivery=deliver_task.delay, worker=self.request.hostname)
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
        return len(jobs)


def _send_process(job_id: int, study_instance_uid: str, study_dir: str, out_dir: str) -> None:
    process_study_task.delay(job_id, study_instance_uid, study_dir, out_dir)


def apply_settings(settings: Settings) -> None:
    """Bind the worker's settings and apply their retry policy (Celery reads these attributes at each call)."""
    bind_settings(settings)
    for task in (process_study_task, deliver_task, poll_ready_task):
        task.max_retries = settings.task_max_retries  # read by _give_up_if_last; the delay is NodeTask's
