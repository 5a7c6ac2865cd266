"""The job layer's work, without Celery: process one ledger job, dispatch ready studies.

:func:`run_process_job`: ledger job ``queued -> processing``, run :func:`node.jobs.process.process_study` with
the job's :class:`~node.sr.identity.ResultIdentity` (its study version fixes the result UIDs; the SR of the job it
supersedes becomes the predecessor), write the result summary, then **in one ledger transaction** finish the job
(``processing -> done``) and record the pending deliveries of the SR and companions for every configured
destination (:meth:`~node.ledger.deliveries.DeliveryOperations.complete_job`), and hand the job to delivery. A
second run of the same job that loses the race records nothing. An :class:`InvalidStudyError` writes the failure
SR and fails the job (and study) with its message, its deliveries recorded the same way; it is never retried.
:func:`dispatch_ready`: studies the completeness check finds ready are enqueued in the ledger once (the
idempotency key) and handed to the process task; a study that failed without being processed (force-complete
deadline, action ``fail``) gets one job of purpose ``failure-sr`` that only writes and sends its failure SR
(setting ``deadline_failure_sr``). :mod:`node.jobs.tasks` wraps both as Celery tasks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from pathlib import Path

import pydicom
from celery.exceptions import SoftTimeLimitExceeded

from node.errors import InvalidStudyError, NodeError, TransientError
from node.jobs.completeness import CompletenessChecker
from node.jobs.context import JobContext, fail_job, find_job, ledger_errors_are_transient
from node.jobs.process import ProcessResult, process_study, write_failure_report
from node.jobs.recovery import send_recorded
from node.jobs.summary import result_json
from node.ledger.primary import lookup_primary
from node.ledger.repository import JobRecord, LedgerStateError, Repository
from node.ledger.results import ResultDocument, ResultObject
from node.ledger.states import FAILURE_SR_PURPOSE, JobState
from node.log import correlated, study_key
from node.spool import result_dir, result_json_path, uid_key
from node.sr.identity import PriorDocument, ResultIdentity

logger = logging.getLogger(__name__)


def write_result_json(out_dir: Path, result: ProcessResult) -> Path:
    """The predictions, warnings and stage timings of a processed job, as JSON (atomic); ``node.web`` shows it."""
    path = result_json_path(out_dir)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(result_json(result), indent=1), encoding="utf-8")
    staging.replace(path)
    return path


def result_objects(files: tuple[Path, ...]) -> list[ResultObject]:
    """The files to send with their SOP Instance UIDs (read back from the written objects)."""
    objects = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        objects.append(ResultObject(str(path), str(ds.SOPInstanceUID)))
    return objects


def result_document(job: JobRecord, sr_path: Path) -> ResultDocument:
    """The job's SR as a later, superseding SR will reference it."""
    ds = pydicom.dcmread(sr_path, stop_before_pixels=True,
                         specific_tags=["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
    return ResultDocument(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                          str(ds.SOPClassUID), job.id, job.study_version)


def job_identity(ctx: JobContext, job: JobRecord) -> ResultIdentity:
    """What fixes the job's result UIDs (its study version's content digest) and the SR it supersedes."""
    with ledger_errors_are_transient():
        prior = ctx.repo.superseded_document(job.id)
    predecessor = None if prior is None else PriorDocument(
        prior.study_instance_uid, prior.series_instance_uid, prior.sop_instance_uid, prior.sop_class_uid,
        prior.job_id, prior.study_version)
    return ResultIdentity(job.study_instance_uid, job.content_digest, predecessor, job.study_version)


def complete(ctx: JobContext, job: JobRecord, *, ok: bool, reason: str | None, sr_path: Path | None,
             files: tuple[Path, ...], detail: str | None) -> int | None:
    """Finish ``job`` and record its deliveries in one transaction; ``None`` when another run finished it first
    (then nothing of this run is recorded: its result is the same document, see :mod:`node.sr.identity`)."""
    destinations = [str(d) for d in ctx.options.destinations]
    document = None if sr_path is None else result_document(job, sr_path)
    try:
        return ctx.repo.complete_job(job.id, ctx.clock(), ok=ok, reason=reason, objects=result_objects(files),
                                     destinations=destinations, document=document, detail=detail)
    except LedgerStateError as exc:
        logger.warning("job %d finished by another run; this run records nothing: %s", job.id, exc.message)
        return None


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
        try:
            ctx.repo.start_job(job_id, ctx.clock(), worker=worker)
        except LedgerStateError as exc:  # a duplicate message (e.g. a re-queue) and another run took it first
            logger.warning("job %d was started by another run meanwhile: %s", job_id, exc.message)
            return "skipped"
    else:
        logger.warning("job %d was processing when its worker stopped: running it again", job_id)
        ctx.repo.audit("job-resumed", ctx.clock(), study_instance_uid=study_instance_uid,
                       detail=f"job {job_id}" + (f" on {worker}" if worker else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = job_identity(ctx, job)
    if job.purpose == FAILURE_SR_PURPOSE:
        return report_failure(ctx, job, study_dir, out_dir, identity, queue_delivery)
    try:
        result = process_study(study_dir, out_dir, models_dir=ctx.options.models_dir,
                               primary_lookup=primary_lookup(ctx.repo),
                               primary_attributes=ctx.options.primary_attributes, identity=identity,
                               index_rule=ctx.settings.index_lesion,
                               her2_three_tier=ctx.options.her2_three_tier,
                               dl_model_dir=ctx.options.dl_model_dir, dl_heads=ctx.options.dl_heads)
    except InvalidStudyError as exc:
        logger.warning("study cannot be processed: %s", exc.message)
        report = None
        if ctx.options.failure_sr:
            report = write_failure_report(study_dir, out_dir, exc, models_dir=ctx.options.models_dir,
                                          identity=identity)
        files = () if report is None else (report,)
        pending = complete(ctx, job, ok=False, reason=exc.message, sr_path=report, files=files,
                           detail=None if report is None else f"failure SR {report}")
        if pending and queue_delivery is not None:
            queue_delivery(job_id)
        return "failed" if pending is not None else "skipped"
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
    write_result_json(out_dir, result)
    deliveries = complete(ctx, job, ok=True, reason=None, sr_path=result.sr_path, files=result.paths,
                          detail=f"{result.sr_path} ({result.subtype_model}, {len(result.lesions)} lesion(s)"
                          f"{f', {len(result.not_assessed)} not assessed' if result.not_assessed else ''})")
    if deliveries is None:  # a concurrent run finished first: its result (the same document) stands
        return "skipped"
    logger.info("job %d done: %s, %d delivery(ies) pending", job_id, result.sr_path, deliveries)
    if deliveries and queue_delivery is not None:
        queue_delivery(job_id)
    return "done"


def report_failure(ctx: JobContext, job: JobRecord, study_dir: Path, out_dir: Path, identity: ResultIdentity,
                   queue_delivery: Callable[[int], object] | None) -> str:
    """A ``failure-sr`` job: the study failed without being processed (its reason is the job's); write its failure
    SR (unless ``deadline_failure_sr`` is off) and record it for delivery as the job fails, in one transaction."""
    reason = job.reason or "the study could not be processed"
    report = None
    if ctx.settings.deadline_failure_sr:
        report = write_failure_report(study_dir, out_dir, InvalidStudyError(reason),
                                      models_dir=ctx.options.models_dir, identity=identity)
    files = () if report is None else (report,)
    pending = complete(ctx, job, ok=False, reason=reason, sr_path=report, files=files,
                       detail=None if report is None else f"failure SR {report}")
    if pending and queue_delivery is not None:
        queue_delivery(job.id)
    return "failed" if pending is not None else "skipped"


#: How far back :func:`dispatch_ready` looks for studies failed without processing that are owed a failure SR
#: (a node upgraded from a release without it does not send one for every study that ever failed).
FAILURE_REPORT_WINDOW_S = 86400.0


def dispatch_ready(
    repo: Repository,
    checker: CompletenessChecker,
    now: float,
    send_task: Callable[[int, str, str, str], object],
    spool_dir: Path,
    only: Collection[str] | None = None,
) -> list[JobRecord]:
    """Enqueue every ready study once and hand it to the workers; the jobs created (``ainode serve`` may loop it).

    ``only``: just these studies (the listener, when an association ends), without the failure-SR sweep. Two
    dispatchers (the listener's and the worker's poll) may race for one study: the ledger gives it to one of them
    (:meth:`Repository.enqueue` returns ``None``, or refuses a study another dispatcher queued meanwhile) and only
    that one sends the task.
    """
    created = []
    for study in checker.find_ready_studies(now, only):
        try:
            job = repo.enqueue(study.study_instance_uid, study.idempotency_key, now)
        except LedgerStateError as exc:  # another dispatcher queued it between our check and our enqueue
            logger.debug("study not queued here: %s", exc.message)
            continue
        if job is None:  # this exact content already has a job
            continue
        out_dir = result_dir(spool_dir, study.study_instance_uid, job.id)
        with correlated(job=job.id, study=study_key(study.study_instance_uid)):
            if send_recorded(repo, send_task, job.id, study.study_instance_uid, study.study_dir, out_dir, now):
                logger.info("job %d queued", job.id)
        created.append(job)
    if only is not None:
        return created
    for uid in repo.unreported_failures(now - FAILURE_REPORT_WINDOW_S):
        failure_job = repo.enqueue_failure_report(uid, now)
        if failure_job is None:
            continue
        with correlated(job=failure_job.id, study=study_key(uid)):
            if send_recorded(repo, send_task, failure_job.id, uid, spool_dir / uid_key(uid),
                             result_dir(spool_dir, uid, failure_job.id), now):
                logger.info("job %d queued: failure SR of a study that failed without processing", failure_job.id)
        created.append(failure_job)  # queued in the ledger either way: a failed send is the poll's to repeat
    return created
