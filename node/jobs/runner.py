"""The job layer's work, without Celery: process one ledger job, dispatch ready studies.

:func:`run_process_job`: ledger job ``queued -> processing``, run :func:`node.jobs.process.process_study`,
write the result summary, record the pending deliveries of the SR and companions for every configured
destination, ``processing -> done``, hand the job to delivery. An :class:`InvalidStudyError` marks the job
(and study) failed with its message and writes the failure SR; it is never retried.
:func:`dispatch_ready`: studies the completeness check finds ready are enqueued in the ledger once (the
idempotency key) and handed to the process task. :mod:`node.jobs.tasks` wraps both as Celery tasks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pydicom
from celery.exceptions import SoftTimeLimitExceeded

from node.errors import InvalidStudyError, NodeError, TransientError
from node.jobs.completeness import CompletenessChecker
from node.jobs.context import JobContext, fail_job, find_job, ledger_errors_are_transient
from node.jobs.process import ProcessResult, process_study, write_failure_report
from node.jobs.summary import result_json
from node.ledger.primary import lookup_primary
from node.ledger.repository import JobRecord, LedgerStateError, Repository
from node.ledger.states import DeliveryState, JobState
from node.log import correlated, study_key
from node.spool import result_dir, result_json_path

logger = logging.getLogger(__name__)


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
    """One pending delivery per (destination, result object); the file's path is kept in the ``path`` column."""
    count = 0
    for path in files:
        uid = _sop_instance_uid(path)
        for destination in ctx.options.destinations:
            ctx.repo.record_delivery(job_id, str(destination), uid, DeliveryState.PENDING, ctx.clock(),
                                     path=str(path))
            count += 1
    return count


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
                               primary_lookup=primary_lookup(ctx.repo),
                               primary_attributes=ctx.options.primary_attributes)
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




