"""Jobs: one processing run of one study version, keyed so a re-sent identical study makes no second job.

queued -> processing -> done | failed, each transition guarded and audited; the study follows the state of its
current version's job.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.ledger.records import JobRecord, StudySnapshot, job_record_of
from node.ledger.states import JobState, LedgerStateError, StudyState
from node.ledger.studies import guarded, load_study, set_state
from node.ledger.tables import Job, Study
from node.ledger.transaction import Operations, write_audit

_STUDY_STATE_OF_JOB = {
    JobState.QUEUED: StudyState.QUEUED,
    JobState.PROCESSING: StudyState.PROCESSING,
    JobState.DONE: StudyState.DONE,
    JobState.FAILED: StudyState.FAILED,
}


def get_job(session: Session, job_id: int, *, lock: bool = False) -> Job:
    """The job row; ``lock`` takes its row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
    IMMEDIATE`` already serialises writers) so two transactions never both see it ``processing``."""
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None:
        raise LedgerStateError(f"job {job_id} does not exist")
    return job


def _new_job(session: Session, study: Study, key: str, digest: str, at: float, *, reason: str | None,
             note: str = "") -> Job:
    """A queued job of the study's current version, superseding its latest job; the study becomes queued."""
    previous = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1))
    job = Job(
        study_id=study.id, study_version=study.version, idempotency_key=key, content_digest=digest,
        state=JobState.QUEUED, forced=study.forced, reason=reason,
        supersedes_job_id=None if previous is None else previous.id, created_at=at, updated_at=at,
    )
    session.add(job)
    set_state(study, StudyState.QUEUED, at)
    session.flush()
    write_audit(session, "job-queued", at, study_instance_uid=study.study_instance_uid,
                detail=f"job {job.id}, version {study.version}"
                + (f", supersedes job {previous.id}" if previous is not None else "") + note)
    return job


def finish_in(session: Session, job_id: int, at: float, *, ok: bool, reason: str | None) -> Job:
    """processing -> done | failed inside the caller's transaction (row locked); :class:`LedgerStateError` when
    the job is not processing (another run finished it: the caller's transaction must then change nothing)."""
    job = get_job(session, job_id, lock=True)
    if job.state is not JobState.PROCESSING:
        raise LedgerStateError(f"job {job_id} is {job.state.value}, not processing")
    job.state = JobState.DONE if ok else JobState.FAILED
    job.reason = reason
    job.updated_at = at
    study = job.study
    if study.version == job.study_version and study.state is StudyState.PROCESSING:
        set_state(study, StudyState.DONE if ok else StudyState.FAILED, at)
        study.reason = reason
    write_audit(session, "job-done" if ok else "job-failed", at, study_instance_uid=study.study_instance_uid,
                detail=f"job {job_id}" + (f": {reason}" if reason else ""))
    return job


class JobOperations(Operations):
    def enqueue(self, study_instance_uid: str, key: str, at: float) -> JobRecord | None:
        """ready -> queued with a new job keyed ``key``; ``None`` when a job with that key already exists.

        A known key means this exact content was already handed over (a re-sent identical study): the study
        takes that job's state again and no second job, hence no second result, is created.
        """

        def op(session: Session) -> JobRecord | None:
            study = load_study(session, study_instance_uid)
            if study is None or study.state is not StudyState.READY or study.content_digest is None:
                state = "unknown" if study is None else study.state.value
                raise LedgerStateError(f"study {study_instance_uid} is {state}, not ready: it cannot be queued")
            existing = session.scalar(select(Job).where(Job.idempotency_key == key))
            if existing is not None:
                set_state(study, _STUDY_STATE_OF_JOB[existing.state], at)
                write_audit(session, "job-deduplicated", at, study_instance_uid=study_instance_uid,
                            detail=f"content identical to job {existing.id}; no new job")
                return None
            return job_record_of(_new_job(session, study, key, study.content_digest, at, reason=study.reason))

        return self._run(op)

    def rerun(self, seen: StudySnapshot, key: str, at: float, *, requested_by: str) -> JobRecord | None:
        """done | failed -> queued with a new job keyed ``key`` (an operator's re-run of the version ``seen``).

        ``None`` when a job with ``key`` already exists (the same request made twice). Raises
        :class:`LedgerStateError` when the study is in another state or changed since ``seen`` was taken.
        """

        def op(session: Session) -> JobRecord | None:
            if session.scalar(select(Job.id).where(Job.idempotency_key == key)) is not None:
                return None
            study = guarded(session, seen)
            if study is None or study.state not in (StudyState.DONE, StudyState.FAILED):
                raise LedgerStateError(
                    f"study {seen.study_instance_uid} changed or is not done/failed: it cannot be re-run now"
                )
            study.reason = None
            job = _new_job(session, study, key, seen.content_digest, at, reason=None,
                           note=f", re-run requested by {requested_by}")
            return job_record_of(job)

        return self._run(op)

    def start_job(self, job_id: int, at: float, *, worker: str | None = None) -> JobRecord:
        """queued -> processing (job and, when it is the study's current version, the study); ``worker`` (the
        Celery node name) is recorded in the audit event so an operator can see which worker ran which job."""

        def op(session: Session) -> JobRecord:
            job = get_job(session, job_id)
            if job.state is not JobState.QUEUED:
                raise LedgerStateError(f"job {job_id} is {job.state.value}, not queued")
            job.state = JobState.PROCESSING
            job.updated_at = at
            study = job.study
            if study.version == job.study_version and study.state is StudyState.QUEUED:
                set_state(study, StudyState.PROCESSING, at)
            write_audit(session, "job-started", at, study_instance_uid=study.study_instance_uid,
                        detail=f"job {job_id}" + (f" on {worker}" if worker else ""))
            return job_record_of(job)

        return self._run(op)

    def finish_job(self, job_id: int, at: float, *, ok: bool, reason: str | None = None) -> JobRecord:
        """processing -> done | failed."""
        return self._run(lambda session: job_record_of(finish_in(session, job_id, at, ok=ok, reason=reason)))

    def jobs(self, study_instance_uid: str) -> list[JobRecord]:
        def op(session: Session) -> list[JobRecord]:
            query = select(Job).join(Study).where(Study.study_instance_uid == study_instance_uid).order_by(Job.id)
            return [job_record_of(j) for j in session.scalars(query)]

        return self._run(op)

    def requeue_job(self, job_id: int, at: float, *, requested_by: str, queued_after_s: float,
                    processing_after_s: float, force: bool = False) -> JobRecord:
        """A stuck job back to ``queued`` (job, and the study when it is its current version), audited
        ``job-requeued`` with who asked; the caller then hands it to the workers again.

        Stuck means: ``queued`` for at least ``queued_after_s`` (its message may never have reached the broker)
        or ``processing`` for at least ``processing_after_s`` (past the hard time limit no worker still runs it),
        measured from the job's last change; ``force`` skips that check. Re-queueing a job a worker still holds
        is harmless: only the run that finishes it records a result (:mod:`node.ledger.results`). A done or
        failed job raises :class:`LedgerStateError` (re-run the study instead).
        """

        def op(session: Session) -> JobRecord:
            job = get_job(session, job_id, lock=True)
            if job.state not in (JobState.QUEUED, JobState.PROCESSING):
                raise LedgerStateError(f"job {job_id} is {job.state.value}: only a queued or processing job can be "
                                       "re-queued (re-run the study instead)")
            age = at - job.updated_at
            limit = queued_after_s if job.state is JobState.QUEUED else processing_after_s
            if age < limit and not force:
                raise LedgerStateError(
                    f"job {job_id} has been {job.state.value} for {age:.0f} s only (not stuck before {limit:.0f} s): "
                    "a worker may still hold it; force it if you know none does"
                )
            previous = job.state
            job.state = JobState.QUEUED
            job.updated_at = at
            study = job.study
            if study.version == job.study_version and study.state in (StudyState.QUEUED, StudyState.PROCESSING):
                set_state(study, StudyState.QUEUED, at)
            write_audit(session, "job-requeued", at, study_instance_uid=study.study_instance_uid,
                        detail=f"job {job_id} ({previous.value} for {age:.0f} s) re-queued by {requested_by}"
                        + (" (forced)" if force else ""))
            return job_record_of(job)

        return self._run(op)

    def stuck_jobs(self, at: float, *, queued_after_s: float, processing_after_s: float) -> list[JobRecord]:
        """Jobs :meth:`requeue_job` would take without ``force``, oldest first."""

        def op(session: Session) -> list[JobRecord]:
            query = select(Job).where(
                ((Job.state == JobState.QUEUED) & (Job.updated_at <= at - queued_after_s))
                | ((Job.state == JobState.PROCESSING) & (Job.updated_at <= at - processing_after_s))
            ).order_by(Job.id)
            return [job_record_of(j) for j in session.scalars(query)]

        return self._run(op)

    def job(self, job_id: int) -> JobRecord | None:
        """One job by id; ``None`` when there is none."""

        def op(session: Session) -> JobRecord | None:
            job = session.get(Job, job_id)
            return None if job is None else job_record_of(job)

        return self._run(op)
