"""The node's Celery tasks: thin, typed, idempotent, taking ids and paths (engineering.md §3.5).

Each task sets the correlation id (``node.log.correlated``), then calls a plain function of this module that
does the work against the ledger and can be unit-tested without Celery:

* :func:`run_process_job` (task ``ainode.process_study``): ledger job ``queued -> processing``, run
  :func:`node.jobs.process.process_study`, record the pending deliveries of the SR and companions for every
  configured destination, ``processing -> done``, queue ``ainode.deliver``. An :class:`InvalidStudyError`
  marks the job (and study) failed with its message and writes the failure SR; it is never retried.
* :func:`dispatch_ready` (task ``ainode.poll_ready``, periodic): studies the completeness check finds ready are
  enqueued in the ledger once (the idempotency key) and handed to ``ainode.process_study``.
* ``ainode.deliver``: :func:`node.delivery.outbox.deliver_pending` sends the due deliveries.

Delivery is at least once (``acks_late`` + ``reject_on_worker_lost``): a redelivered job that is ``done`` or
``failed`` in the ledger is skipped; one still ``processing`` (its worker died) is run again. Only
:class:`TransientError` is retried (exponential backoff with full jitter, ``max_retries``); ledger database
errors count as transient (the database may be restarting).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from sqlalchemy.exc import OperationalError

from node.config import Destination, Settings, parse_count, parse_seconds
from node.errors import InvalidStudyError, NodeError, TransientError
from node.jobs.summary import result_json
from node.ledger.db import Ledger
from node.ledger.primary import lookup_primary
from node.ledger.repository import JobRecord, LedgerStateError, Repository
from node.ledger.states import DeliveryState, JobState, StudyState
from node.log import correlated, study_key
from node.spool import result_dir, result_json_path, uid_key
from node.vocabulary import DELIVER_TASK, POLL_TASK, PROCESS_TASK

if TYPE_CHECKING:
    from node.jobs.completeness import CompletenessChecker
    from node.jobs.process import ProcessResult

logger = logging.getLogger(__name__)

MODELS_ENV = "AINODE_MODELS_DIR"
FAILURE_SR_ENV = "AINODE_FAILURE_SR"
MAX_RETRIES_ENV = "AINODE_TASK_MAX_RETRIES"
BACKOFF_ENV = "AINODE_RETRY_BACKOFF"


def _env_int(name: str, default: int) -> int:
    return parse_count(os.environ[name], f"environment variable {name}") if name in os.environ else default


def _env_seconds(name: str, default: float) -> float:
    return parse_seconds(os.environ[name], f"environment variable {name}") if name in os.environ else default


#: Retry policy of the tasks (read once at import: every worker process gets the same environment).
MAX_RETRIES = _env_int(MAX_RETRIES_ENV, 5)
RETRY_BACKOFF_S = max(1, round(_env_seconds(BACKOFF_ENV, 30.0)))  # first retry after up to this many seconds
RETRY_BACKOFF_MAX_S = 900


@dataclass(frozen=True)
class JobOptions:
    """What the job layer needs beyond the ledger: the models, destinations and failure-SR switch."""

    destinations: tuple[Destination, ...] = ()
    models_dir: Path | None = None  # None = process_study's default (models/demo)
    failure_sr: bool = True
    spool_dir: Path = Path("spool")

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> JobOptions:
        environ = os.environ if env is None else env
        models = environ.get(MODELS_ENV, "").strip()
        failure = environ.get(FAILURE_SR_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        return cls(settings.destinations, Path(models) if models else None, failure, settings.spool_dir)


@dataclass(frozen=True)
class JobContext:
    repo: Repository
    options: JobOptions
    clock: Callable[[], float] = time.time


@functools.cache
def job_context() -> JobContext:
    """One ledger connection pool per worker process, opened on first use (after the pool forked)."""
    settings = Settings.load()
    with ledger_errors_are_transient():
        ledger = Ledger.open(settings.effective_database_url)
    return JobContext(Repository(ledger, settings.late_instance_policy), JobOptions.from_settings(settings))


@contextmanager
def ledger_errors_are_transient() -> Iterator[None]:
    """A database that cannot be reached (or is locked) is a temporary condition: retry the task."""
    try:
        yield
    except OperationalError as exc:
        raise TransientError(f"the ledger database cannot be reached: {exc.orig}") from exc


def find_job(repo: Repository, job_id: int, study_instance_uid: str) -> JobRecord:
    for job in repo.jobs(study_instance_uid):
        if job.id == job_id:
            return job
    raise LedgerStateError(f"job {job_id} of study {study_instance_uid} does not exist")


def write_result_json(out_dir: Path, result: ProcessResult) -> Path:
    """The predictions, warnings and stage timings of a processed job, as JSON (atomic); ``node.web`` shows it."""
    path = result_json_path(out_dir)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(result_json(result), indent=1), encoding="utf-8")
    staging.replace(path)
    return path


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def record_deliveries(ctx: JobContext, job_id: int, files: tuple[Path, ...]) -> int:
    """One pending delivery per (destination, result object); ``detail`` holds the file's path."""
    count = 0
    for path in files:
        uid = _sop_instance_uid(path)
        for destination in ctx.options.destinations:
            ctx.repo.record_delivery(job_id, str(destination), uid, DeliveryState.PENDING, ctx.clock(),
                                     path=str(path))
            count += 1
    return count


def fail_job(ctx: JobContext, job_id: int, reason: str) -> None:
    """processing -> failed, unless another delivery of the task finished the job meanwhile."""
    try:
        ctx.repo.finish_job(job_id, ctx.clock(), ok=False, reason=reason)
    except LedgerStateError as exc:
        logger.warning("job %d not marked failed: %s", job_id, exc.message)


def primary_lookup(repo: Repository) -> Callable[[str, str | None, str | None], tuple[str, str] | None]:
    """The entries set with ``ainode primary``, as :func:`node.jobs.process.process_study` asks for them."""

    def lookup(study_uid: str, accession: str | None, patient_id: str | None) -> tuple[str, str] | None:
        with ledger_errors_are_transient():
            entry = lookup_primary(repo, study_uid, accession, patient_id)
        return None if entry is None else (entry.subtype, entry.source)

    return lookup


def run_process_job(
    ctx: JobContext,
    job_id: int,
    study_instance_uid: str,
    study_dir: Path,
    out_dir: Path,
    *,
    queue_delivery: Callable[[int], object] | None = None,
    worker: str | None = None,
) -> str:
    """Process one ledger job; returns ``done``, ``failed`` or ``skipped`` (already finished).

    ``worker`` (the Celery node name running it) goes into the ``job-started`` / ``job-resumed`` audit events.
    """
    from node.jobs.process import process_study, write_failure_report

    job = find_job(ctx.repo, job_id, study_instance_uid)
    if job.state in (JobState.DONE, JobState.FAILED):
        logger.info("job %d is already %s: nothing to do", job_id, job.state.value)
        return "skipped"
    if job.state is JobState.QUEUED:
        ctx.repo.start_job(job_id, ctx.clock(), worker=worker)
    else:
        logger.warning("job %d was processing when its worker stopped: running it again", job_id)
        ctx.repo.audit("job-resumed", ctx.clock(), study_instance_uid=study_instance_uid,
                       detail=f"job {job_id}" + (f" on {worker}" if worker else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = process_study(study_dir, out_dir, models_dir=ctx.options.models_dir,
                               primary_lookup=primary_lookup(ctx.repo))
    except InvalidStudyError as exc:
        logger.warning("study cannot be processed: %s", exc.message)
        pending = 0
        if ctx.options.failure_sr:
            report = write_failure_report(study_dir, out_dir, exc, models_dir=ctx.options.models_dir)
            if report is not None:
                pending = record_deliveries(ctx, job_id, (report,))
        fail_job(ctx, job_id, exc.message)
        if pending and queue_delivery is not None:
            queue_delivery(job_id)
        return "failed"
    except TransientError:
        raise  # retried by Celery; the job stays processing until a retry finishes it
    except NodeError as exc:  # ProcessingError / ConfigError: retrying the same input cannot help
        logger.error("processing failed: %s", exc.message)
        fail_job(ctx, job_id, exc.message)
        return "failed"
    except SoftTimeLimitExceeded:
        fail_job(ctx, job_id, "processing exceeded its time limit")
        return "failed"
    except Exception as exc:  # a bug must not leave the job "processing" for ever (re-raised)
        fail_job(ctx, job_id, f"internal error ({type(exc).__name__}); see the worker log")
        raise
    files = (result.sr_path, *result.companion_paths)
    write_result_json(out_dir, result)
    deliveries = record_deliveries(ctx, job_id, files)
    ctx.repo.audit("job-result", ctx.clock(), study_instance_uid=study_instance_uid,
                   detail=f"job {job_id}: {result.sr_path} ({result.subtype_model}, {len(result.lesions)} lesion(s))")
    try:
        ctx.repo.finish_job(job_id, ctx.clock(), ok=True)
    except LedgerStateError as exc:  # a concurrent redelivery finished first: its result stands
        logger.warning("job %d finished by another run: %s", job_id, exc.message)
        return "skipped"
    logger.info("job %d done: %s, %d delivery(ies) pending", job_id, result.sr_path, deliveries)
    if deliveries and queue_delivery is not None:
        queue_delivery(job_id)
    return "done"


def dispatch_ready(
    repo: Repository,
    checker: CompletenessChecker,
    now: float,
    send_task: Callable[[int, str, str, str], object],
    spool_dir: Path,
) -> list[JobRecord]:
    """Enqueue every ready study once and hand it to the workers; the jobs created (``ainode serve`` may loop it)."""
    created = []
    for study in checker.find_ready_studies(now):
        job = repo.enqueue(study.study_instance_uid, study.idempotency_key, now)
        if job is None:  # this exact content already has a job
            continue
        out_dir = result_dir(spool_dir, study.study_instance_uid, job.id)
        send_task(job.id, study.study_instance_uid, str(study.study_dir), str(out_dir))
        with correlated(job=job.id, study=study_key(study.study_instance_uid)):
            logger.info("job %d queued", job.id)
        created.append(job)
    return created


RECOVER_ENV = "AINODE_RECOVER_ORPHANS"


def queued_job_ids(queue_folder: Path) -> set[int]:
    """The job ids of the ``ainode.process_study`` messages waiting in the embedded broker's queue folder."""
    ids: set[int] = set()
    for path in queue_folder.glob("*.msg"):
        try:
            message = json.loads(path.read_text(encoding="utf-8"))
            if message["headers"]["task"] != PROCESS_TASK:
                continue
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.add(int(args[0]))
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue  # taken by a consumer meanwhile, or not a task message of ours
    return ids


def redispatch_orphans(
    repo: Repository, spool_dir: Path, waiting: set[int], send_task: Callable[[int, str, str, str], object]
) -> list[int]:
    """Send again every ``queued``/``processing`` job whose message is not ``waiting`` in the broker.

    For the embedded broker, at the start of the *only* worker on a spool: a SIGKILL of the previous worker's
    main process lost the messages it had reserved (no server-side visibility timeout). Redelivered jobs are
    idempotent (a ``processing`` job is run again). Never run it while another worker may hold messages.
    """
    resent = []
    open_states = [StudyState.RECEIVING, StudyState.READY, StudyState.QUEUED, StudyState.PROCESSING]
    for study in repo.studies(open_states):
        uid = study.study_instance_uid
        for job in repo.jobs(uid):
            if job.state in (JobState.QUEUED, JobState.PROCESSING) and job.id not in waiting:
                send_task(job.id, uid, str(spool_dir / uid_key(uid)), str(result_dir(spool_dir, uid, job.id)))
                logger.warning("job %d (%s) had no message in the broker: sent again", job.id, job.state.value)
                resent.append(job.id)
    return resent


@worker_ready.connect
def _recover_orphans(sender: Any = None, **_kwargs: Any) -> None:
    """``ainode worker --recover``: on the embedded broker, re-send jobs a killed worker took with it."""
    if os.environ.get(RECOVER_ENV) != "1":
        return
    options = sender.app.conf.broker_transport_options if sender is not None else {}
    folder = options.get("data_folder_in")
    if not folder:
        logger.warning("--recover only applies to the embedded broker; Redis redelivers by visibility timeout")
        return
    with correlated("recover"), ledger_errors_are_transient():
        ctx = job_context()
        redispatch_orphans(ctx.repo, ctx.options.spool_dir, queued_job_ids(Path(folder)), _send_process)


# ---------------------------------------------------------------------------------------------------------
# Celery wiring: each task only sets the correlation id, opens the context and calls a function above.

_RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": (TransientError,),
    "retry_backoff": RETRY_BACKOFF_S,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": MAX_RETRIES,
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
    from node.delivery.outbox import deliver_pending

    with correlated("deliver", job=job_id), ledger_errors_are_transient():
        now = time.time()
        outcomes = deliver_pending(job_context().repo, now)
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
        settings = Settings.load()
        checker = CompletenessChecker(ctx.repo, load_rules(), CompletenessPolicy.from_settings(settings),
                                      settings.spool_dir)
        jobs = dispatch_ready(ctx.repo, checker, time.time(), _send_process, ctx.options.spool_dir)
        return len(jobs)


def _send_process(job_id: int, study_instance_uid: str, study_dir: str, out_dir: str) -> None:
    process_study_task.delay(job_id, study_instance_uid, study_dir, out_dir)


__all__ = [
    "JobContext", "JobOptions", "deliver_task", "dispatch_ready", "job_context", "poll_ready_task",
    "process_study_task", "queued_job_ids", "record_deliveries", "redispatch_orphans", "result_dir",
    "result_json_path", "run_process_job", "write_result_json",
]
