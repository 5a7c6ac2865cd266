"""Results of jobs: finishing a job together with its deliveries, the SR a superseding result replaces, and the
failure SR owed to a study that failed without being processed.

:meth:`ResultOperations.complete_job` is the one place deliveries are created: in the transaction that moves the
job ``processing -> done | failed``, so only the run that finishes a job records any (issue 10 item 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from node.ledger.jobs import finish_in, get_job
from node.ledger.records import JobRecord, content_digest, idempotency_key, job_record_of
from node.ledger.states import FAILURE_SR_PURPOSE, DeliveryState, JobState, StudyState
from node.ledger.studies import load_study
from node.ledger.tables import Delivery, Job, Study
from node.ledger.transaction import Operations, write_audit


@dataclass(frozen=True)
class ResultObject:
    """One validated result file of a finished job, to send to every destination."""

    path: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ResultDocument:
    """The SR (result or failure SR) a job produced: what a later, superseding SR references."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    job_id: int = 0
    study_version: int = 0


class ResultOperations(Operations):
    def complete_job(
        self,
        job_id: int,
        at: float,
        *,
        ok: bool,
        reason: str | None = None,
        objects: Sequence[ResultObject] = (),
        destinations: Sequence[str] = (),
        document: ResultDocument | None = None,
        detail: str | None = None,
    ) -> int:
        """Finish the job (processing -> done | failed) **and** record its pending deliveries, one per
        (destination, object), in one transaction; returns how many deliveries were recorded.

        Only the run that finishes the job records anything: a second run of the same job (a redelivery, an
        overlapping run) gets :class:`LedgerStateError` and its transaction changes nothing, so it can never
        add deliveries of its own; a run killed before the commit leaves the job ``processing`` with no
        delivery (its redelivery runs again). ``document`` (the job's SR) is kept on the job for a superseding
        SR to reference; ``detail`` becomes the ``job-result`` audit event.
        """

        def op(session: Session) -> int:
            job = finish_in(session, job_id, at, ok=ok, reason=reason)
            uid = job.study.study_instance_uid
            if document is not None:
                job.result_sop_class_uid = document.sop_class_uid
                job.result_series_instance_uid = document.series_instance_uid
                job.result_sop_instance_uid = document.sop_instance_uid
            if detail is not None:
                write_audit(session, "job-result", at, study_instance_uid=uid, detail=f"job {job_id}: {detail}")
            count = 0
            for obj in objects:
                for destination in destinations:
                    session.add(Delivery(job_id=job_id, destination=destination, sop_instance_uid=obj.sop_instance_uid,
                                         state=DeliveryState.PENDING, attempts=0, path=obj.path, updated_at=at))
                    write_audit(session, "delivery-pending", at, study_instance_uid=uid,
                                sop_instance_uid=obj.sop_instance_uid, detail=f"job {job_id} -> {destination}")
                    count += 1
            return count

        return self._run(op)

    def unreported_failures(self, since: float) -> list[str]:
        """Studies that failed since ``since`` without a job of their current version (the completeness check's
        force-complete deadline with action ``fail``): they are owed a failure SR (``failure_report_key``)."""

        def op(session: Session) -> list[str]:
            has_job = exists().where(Job.study_id == Study.id, Job.study_version == Study.version)
            query = (select(Study.study_instance_uid).where(Study.state == StudyState.FAILED,
                                                            Study.state_changed_at >= since, ~has_job)
                     .order_by(Study.id))
            return list(session.scalars(query))

        return self._run(op)

    def enqueue_failure_report(self, study_instance_uid: str, at: float) -> JobRecord | None:
        """A queued job (purpose ``failure-sr``) that only writes and sends the failure SR of a study that failed
        without being processed; the study stays ``failed`` with its reason. ``None`` when the study has a job of
        its current version already, or is not failed (nothing owed, or asked twice)."""

        def op(session: Session) -> JobRecord | None:
            study = load_study(session, study_instance_uid)
            if study is None or study.state is not StudyState.FAILED:
                return None
            if session.scalar(select(Job.id).where(Job.study_id == study.id,
                                                   Job.study_version == study.version)) is not None:
                return None
            digest = content_digest((i.sop_instance_uid, i.sha256) for s in study.series for i in s.instances)
            key = idempotency_key(study_instance_uid, f"{digest}\n{FAILURE_SR_PURPOSE}-v{study.version}")
            previous = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1))
            job = Job(study_id=study.id, study_version=study.version, idempotency_key=key, content_digest=digest,
                      state=JobState.QUEUED, forced=True, reason=study.reason, purpose=FAILURE_SR_PURPOSE,
                      supersedes_job_id=None if previous is None else previous.id, created_at=at, updated_at=at)
            session.add(job)
            session.flush()
            write_audit(session, "job-queued", at, study_instance_uid=study_instance_uid,
                        detail=f"job {job.id}, version {study.version}: failure SR of a study failed without "
                        f"processing ({study.reason})")
            return job_record_of(job)

        return self._run(op)

    def superseded_document(self, job_id: int) -> ResultDocument | None:
        """The SR a new result of job ``job_id`` replaces: the latest SR recorded by the jobs it supersedes
        (following ``supersedes_job_id`` back past jobs that recorded none); ``None`` for a first result."""

        def op(session: Session) -> ResultDocument | None:
            job = get_job(session, job_id)
            seen = {job.id}
            previous = job.supersedes_job_id
            while previous is not None and previous not in seen:
                seen.add(previous)
                earlier = get_job(session, previous)
                if earlier.result_sop_instance_uid and earlier.result_series_instance_uid \
                        and earlier.result_sop_class_uid:
                    return ResultDocument(earlier.study.study_instance_uid, earlier.result_series_instance_uid,
                                          earlier.result_sop_instance_uid, earlier.result_sop_class_uid,
                                          earlier.id, earlier.study_version)
                previous = earlier.supersedes_job_id
            return None

        return self._run(op)
