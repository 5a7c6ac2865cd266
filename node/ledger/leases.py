"""Leases: which run holds a job, whether its worker is alive, and how often its process died.

A run of ``ainode.process_study`` *claims* its job before it works on it (:func:`claim_job`): it takes the lease
(its Celery task id) unless a live run of another message holds it. The worker's main process renews the leases
of the tasks it holds every few seconds (:func:`renew_leases`); a run records its end (:func:`end_attempt`).
``running_since`` still set when a run begins, or when the recovery sweep finds the lease stale, means the
previous run's process died: ``worker_deaths`` counts those, and past the cap the job fails with the reason.
The sweep (:func:`stalled_jobs`, :func:`release_for_redelivery`) re-sends a processing job whose lease went
stale, which is how a killed worker's job comes back within seconds on every broker.
A job's ``sent_at`` records that its task message reached the broker (:func:`mark_sent`); a queued job whose
message was never confirmed (the broker was unreachable when it was queued) is sent again by the poll
(:func:`unsent_jobs`) instead of waiting for an operator.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from node.ledger.jobs import get_job
from node.ledger.states import JobState, StudyState
from node.ledger.studies import set_state
from node.ledger.tables import Job
from node.ledger.transaction import Operations, write_audit


class ClaimOutcome(enum.StrEnum):
    RUN = "run"  # the lease is ours: run the job
    HELD = "held"  # a live run of another message holds it: this message is a duplicate, drop it
    FINISHED = "finished"  # the job is done or failed: nothing to run
    CAPPED = "capped"  # its process died too often: the job was failed now, with the reason


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    attempts: int = 0
    worker_deaths: int = 0
    reason: str | None = None  # why the job was failed (CAPPED)


@dataclass(frozen=True)
class StalledJob:
    """A processing job whose lease is stale: its worker stopped renewing it."""

    job_id: int
    study_instance_uid: str
    lease: str | None
    heartbeat_at: float | None
    running_since: float | None
    worker_deaths: int


def deaths_reason(deaths: int, cap: int) -> str:
    return (f"the process running this job died {deaths} time(s) (out of memory, a crash, or killed?); "
            f"not retried again (at most {cap} redelivery(ies), AINODE_JOB_MAX_REDELIVERIES)")


def time_limit_reason(limit_s: float) -> str:
    return f"processing was killed at the hard time limit ({limit_s:g} s, AINODE_TASK_TIME_LIMIT)"


def _fail_open_job(session: Session, job: Job, at: float, reason: str) -> None:
    """queued | processing -> failed with ``reason`` (the study too, when it is the job's version)."""
    job.state = JobState.FAILED
    job.reason = reason
    job.updated_at = at
    job.running_since = None
    study = job.study
    if study.version == job.study_version and study.state in (StudyState.QUEUED, StudyState.PROCESSING):
        set_state(study, StudyState.FAILED, at)
        study.reason = reason
    write_audit(session, "job-failed", at, study_instance_uid=study.study_instance_uid,
                detail=f"job {job.id}: {reason}")


def claim_job(ops: Operations, job_id: int, holder: str, at: float, *, stale_after_s: float,
              max_redeliveries: int) -> Claim:
    """Take the lease of job ``job_id`` for the run ``holder`` (a Celery task id) at ``at``.

    The lease is free when nobody holds it, when ``holder`` already does (the same message again: a pool process
    died and Celery requeued it), or when its heartbeat is older than ``stale_after_s`` (the holder's worker is
    gone). A run still open (``running_since``) is counted as a death; past ``max_redeliveries`` deaths the job
    fails now with the reason instead of running again.
    """

    def op(session: Session) -> Claim:
        job = get_job(session, job_id)
        attempts, deaths = job.attempts or 0, job.worker_deaths or 0
        if job.state in (JobState.DONE, JobState.FAILED):
            return Claim(ClaimOutcome.FINISHED, attempts, deaths)
        alive = job.heartbeat_at is not None and job.heartbeat_at >= at - stale_after_s
        if job.lease is not None and job.lease != holder and alive:
            return Claim(ClaimOutcome.HELD, attempts, deaths)
        if job.running_since is not None:
            deaths += 1
            job.worker_deaths = deaths
        if deaths > max_redeliveries:
            reason = deaths_reason(deaths, max_redeliveries)
            _fail_open_job(session, job, at, reason)
            return Claim(ClaimOutcome.CAPPED, attempts, deaths, reason)
        job.attempts = attempts = attempts + 1
        job.lease, job.heartbeat_at, job.running_since = holder, at, at
        return Claim(ClaimOutcome.RUN, attempts, deaths)

    return ops._run(op)


def renew_leases(ops: Operations, holders: Collection[str], at: float) -> int:
    """The worker holding the tasks ``holders`` is alive at ``at``: renew their jobs' leases; returns how many.

    A heartbeat already in the future (a retry's countdown) is not moved back.
    """
    if not holders:
        return 0

    def op(session: Session) -> int:
        statement = (
            update(Job)
            .where(Job.lease.in_(list(holders)), Job.state.in_([JobState.QUEUED, JobState.PROCESSING]),
                   or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < at))
            .values(heartbeat_at=at)
            .execution_options(synchronize_session=False)
        )
        return int(session.execute(statement).rowcount or 0)  # type: ignore[attr-defined]

    return ops._run(op)


def end_attempt(ops: Operations, job_id: int, holder: str, at: float, *, alive_until: float | None = None) -> bool:
    """The run ``holder`` of job ``job_id`` ended without its process dying (done, failed, retrying, or
    interrupted by a stop). ``alive_until`` keeps the lease alive until then (a retry's countdown), else it
    stays as renewed last. False when another run holds the lease now."""

    def op(session: Session) -> bool:
        job = get_job(session, job_id)
        if job.lease != holder:
            return False
        job.running_since = None
        if alive_until is not None:
            job.heartbeat_at = max(job.heartbeat_at or at, alive_until)
        return True

    return ops._run(op)


def interrupt_attempts(ops: Operations, holders: Collection[str]) -> int:
    """A worker is stopping (warm shutdown) with the runs ``holders``: their runs end without counting as a
    death (the lease stays: renewed while the run goes on, stale once the worker is gone)."""
    if not holders:
        return 0

    def op(session: Session) -> int:
        statement = (
            update(Job)
            .where(Job.lease.in_(list(holders)), Job.state.in_([JobState.QUEUED, JobState.PROCESSING]))
            .values(running_since=None)
            .execution_options(synchronize_session=False)
        )
        return int(session.execute(statement).rowcount or 0)  # type: ignore[attr-defined]

    return ops._run(op)


def stalled_jobs(ops: Operations, now: float, *, stale_after_s: float, never_leased_after_s: float) -> list[StalledJob]:
    """Processing jobs whose lease is older than ``stale_after_s``; a job never leased (a worker of an earlier
    release runs it) only after ``never_leased_after_s`` without a change (the hard time limit)."""

    def op(session: Session) -> list[StalledJob]:
        query = select(Job).where(Job.state == JobState.PROCESSING, or_(
            and_(Job.heartbeat_at.is_not(None), Job.heartbeat_at < now - stale_after_s),
            and_(Job.heartbeat_at.is_(None), Job.updated_at < now - never_leased_after_s),
        )).order_by(Job.id)
        return [StalledJob(j.id, j.study.study_instance_uid, j.lease, j.heartbeat_at, j.running_since,
                           j.worker_deaths or 0) for j in session.scalars(query)]

    return ops._run(op)


class Redelivery(enum.StrEnum):
    RESEND = "resend"  # the lease was released: send the job's task again
    FAILED = "failed"  # failed now (too many deaths, or killed at the hard time limit)
    NOT_STALE = "not-stale"  # renewed or finished meanwhile: nothing to do


def release_for_redelivery(ops: Operations, job_id: int, at: float, *, stale_after_s: float, resend_window_s: float,
                           max_redeliveries: int, hard_limit_s: float, force: bool = False) -> tuple[Redelivery, str]:
    """Decide, in one transaction, what becomes of a stalled job: released for a new message (the dead run
    counted), or failed with the reason. ``resend_window_s`` is how long the new message has to be claimed
    before the job counts as stalled again. ``force`` (``ainode worker --recover``: no other worker alive)
    releases a lease however recently it was renewed. Returns the decision and its detail for the audit trail.
    """

    def op(session: Session) -> tuple[Redelivery, str]:
        job = get_job(session, job_id)
        if job.state is not JobState.PROCESSING and not (force and job.state is JobState.QUEUED):
            return Redelivery.NOT_STALE, job.state.value
        if not force and job.heartbeat_at is not None and job.heartbeat_at >= at - stale_after_s:
            return Redelivery.NOT_STALE, "renewed"
        uid = job.study.study_instance_uid
        deaths = job.worker_deaths or 0
        if job.running_since is not None:
            if at - job.running_since >= hard_limit_s:
                reason = time_limit_reason(hard_limit_s)
                _fail_open_job(session, job, at, reason)
                return Redelivery.FAILED, reason
            deaths += 1
            job.worker_deaths = deaths
        if deaths > max_redeliveries:
            reason = deaths_reason(deaths, max_redeliveries)
            _fail_open_job(session, job, at, reason)
            return Redelivery.FAILED, reason
        job.lease, job.running_since, job.heartbeat_at = None, None, at + resend_window_s
        detail = (f"job {job.id}: its worker stopped renewing it; sent again (redelivery {deaths} of at most "
                  f"{max_redeliveries})")
        write_audit(session, "job-redelivered", at, study_instance_uid=uid, detail=detail)
        return Redelivery.RESEND, detail

    return ops._run(op)


def fail_leased_job(ops: Operations, holder: str, at: float, reason: str) -> int | None:
    """Fail the open job whose lease ``holder`` holds (its run was killed at the hard time limit); its id."""

    def op(session: Session) -> int | None:
        job = session.scalar(select(Job).where(Job.lease == holder,
                                                Job.state.in_([JobState.QUEUED, JobState.PROCESSING])))
        if job is None:
            return None
        _fail_open_job(session, job, at, reason)
        return job.id

    return ops._run(op)


@dataclass(frozen=True)
class UnsentJob:
    job_id: int
    study_instance_uid: str


def mark_sent(ops: Operations, job_id: int, at: float | None) -> None:
    """Record that the job's task message was handed to the broker at ``at`` (``None``: the send failed, so the
    poll sends it again)."""

    def op(session: Session) -> None:
        session.execute(update(Job).where(Job.id == job_id).values(sent_at=at))

    ops._run(op)


def unsent_jobs(ops: Operations, now: float, *, grace_s: float) -> list[UnsentJob]:
    """Open jobs no run holds whose message was not confirmed sent, unchanged for ``grace_s`` (the dispatcher
    records the send milliseconds after queueing; the grace keeps the poll off a send in progress)."""

    def op(session: Session) -> list[UnsentJob]:
        # a processing job without a lease was released for redelivery by this release (heartbeat set); one
        # whose heartbeat is NULL may run on a worker of an earlier release, which takes no lease: left alone
        query = select(Job).where(
            or_(Job.state == JobState.QUEUED, and_(Job.state == JobState.PROCESSING, Job.heartbeat_at.is_not(None))),
            Job.lease.is_(None), Job.sent_at.is_(None), Job.updated_at < now - grace_s,
        ).order_by(Job.id)
        return [UnsentJob(j.id, j.study.study_instance_uid) for j in session.scalars(query)]

    return ops._run(op)
