"""The dashboard's actions, each audited with who asked (``web:<client address>``):

* **re-run** a done or failed study: a new ledger job (:meth:`Repository.rerun`) handed to the workers exactly as
  the node hands its own jobs (``ainode.process_study`` with the study's spool folder and the job's result
  folder). The job's idempotency key is the study's key extended by the job being re-run
  (:func:`rerun_key`), so the same request sent twice (a double click, a retried POST) makes one job;
* **resend** a failed (dead-letter) delivery: :func:`node.ledger.deliveries.resend`, what ``ainode resend`` does,
  then an ``ainode.deliver`` task so the outbox sends it now rather than at its next periodic pass;
* **re-queue** a stuck job (``queued`` or ``processing`` with no live worker: see :func:`stuck_after`):
  :meth:`Repository.requeue_job`, what ``ainode requeue`` does, then ``ainode.process_study`` again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.config import Settings
from node.errors import NodeError
from node.ledger import deliveries as store
from node.ledger.repository import JobRecord, LedgerStateError, Repository, idempotency_key
from node.ledger.states import DEAD_LETTER_STATES
from node.spool import result_dir, uid_key
from node.web.errors import ConflictError, NotFoundError, UnavailableError

logger = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Hands work to the Celery workers (see :mod:`node.web.dispatch`)."""

    def process(self, job_id: int, study_instance_uid: str, study_dir: str, out_dir: str) -> None: ...

    def deliver(self, job_id: int) -> None: ...


#: A queued job is taken as stuck (its message may never have reached the broker) after this long unchanged.
STUCK_QUEUED_AFTER_S = 300.0


def stuck_after(settings: Settings) -> tuple[float, float]:
    """(queued, processing) seconds after which a job unchanged for that long counts as stuck: a processing job
    only after the hard task time limit, when no worker can still be running it."""
    return STUCK_QUEUED_AFTER_S, settings.hard_time_limit


def requeue_and_dispatch(repo: Repository, dispatcher: Dispatcher, spool_dir: Path, job_id: int, who: str, at: float,
                         *, settings: Settings, force: bool = False) -> JobRecord:
    """Re-queue one stuck job in the ledger (audited) and hand it to the workers (``ainode requeue`` and the
    dashboard). Raises :class:`LedgerStateError` when it is not stuck (or unknown), the dispatcher's error when the
    broker cannot be reached (the job then stays queued: re-queue it again later)."""
    queued_after, processing_after = stuck_after(settings)
    job = repo.requeue_job(job_id, at, requested_by=who, queued_after_s=queued_after,
                           processing_after_s=processing_after, force=force)
    uid = job.study_instance_uid
    dispatcher.process(job.id, uid, str(spool_dir / uid_key(uid)), str(result_dir(spool_dir, uid, job.id)))
    return job


def rerun_key(study_instance_uid: str, content_digest: str, previous_job_id: int) -> str:
    """The idempotency key of "re-run the study's content after job ``previous_job_id``"."""
    return idempotency_key(study_instance_uid, f"{content_digest}\nrerun-after-job-{previous_job_id}")


@dataclass(frozen=True)
class RerunOutcome:
    job: JobRecord
    created: bool  # False: the same re-run had been requested before; ``job`` is that one


@dataclass
class Actions:
    repo: Repository
    spool_dir: Path
    dispatcher: Dispatcher
    clock: Callable[[], float] = time.time

    def rerun(self, study_instance_uid: str, who: str, after_job: int | None = None) -> RerunOutcome:
        seen = self.repo.study(study_instance_uid)
        if seen is None:
            raise NotFoundError(f"study {study_instance_uid} is not in the ledger")
        jobs = self.repo.jobs(study_instance_uid)
        if after_job is None:
            after_job = jobs[-1].id if jobs else 0
        elif after_job not in {j.id for j in jobs}:
            raise NotFoundError(f"job {after_job} is not a job of study {study_instance_uid}")
        key = rerun_key(study_instance_uid, seen.content_digest, after_job)
        now = self.clock()
        try:
            job = self.repo.rerun(seen, key, now, requested_by=who)
        except LedgerStateError as exc:
            self.repo.audit("web-rerun-refused", now, peer=who, study_instance_uid=study_instance_uid,
                            detail=exc.message)
            raise ConflictError(f"{exc.message} (it is {seen.state.value})") from exc
        if job is None:
            existing = next(j for j in self.repo.jobs(study_instance_uid) if j.idempotency_key == key)
            self.repo.audit("web-rerun", now, peer=who, study_instance_uid=study_instance_uid,
                            detail=f"re-run after job {after_job} already requested: job {existing.id}")
            return RerunOutcome(existing, created=False)
        out_dir = result_dir(self.spool_dir, study_instance_uid, job.id)
        try:
            self.dispatcher.process(job.id, study_instance_uid, str(self.spool_dir / uid_key(study_instance_uid)),
                                    str(out_dir))
        except (OSError, NodeError) as exc:
            detail = f"job {job.id} created but not handed to the workers: {exc}"
            self.repo.audit("web-rerun", now, peer=who, study_instance_uid=study_instance_uid, detail=detail)
            raise UnavailableError(detail + " (the broker is unreachable; `ainode worker --recover` re-sends "
                                   "queued jobs on the embedded broker)") from exc
        self.repo.audit("web-rerun", now, peer=who, study_instance_uid=study_instance_uid,
                        detail=f"job {job.id} queued (re-run after job {after_job})")
        logger.info("re-run requested by %s: job %d queued", who, job.id)
        return RerunOutcome(job, created=True)

    def resend(self, delivery_id: int, who: str, *, study_instance_uid: str | None = None) -> int:
        """Re-queue one failed delivery; ``study_instance_uid`` (the page's) must match when given."""
        item = next((d for d in store.deliveries(self.repo) if d.id == delivery_id), None)
        if item is None or (study_instance_uid is not None and item.study_instance_uid != study_instance_uid):
            raise NotFoundError(f"delivery {delivery_id} does not exist")
        now = self.clock()
        if item.state not in DEAD_LETTER_STATES:
            raise ConflictError(f"delivery {delivery_id} is {item.state.value}: only failed (or commit-failed) "
                                "deliveries are resent")
        count = store.resend(self.repo, now, delivery_id=delivery_id)
        self.repo.audit("web-resend", now, peer=who, study_instance_uid=item.study_instance_uid,
                        sop_instance_uid=item.sop_instance_uid,
                        detail=f"delivery {delivery_id} (job {item.job_id} -> {item.destination}) re-queued")
        try:
            self.dispatcher.deliver(item.job_id)
        except (OSError, NodeError) as exc:  # the periodic outbox pass sends it anyway
            logger.warning("delivery %d re-queued; the deliver task could not be sent now: %s", delivery_id, exc)
        return count

    def requeue(self, job_id: int, who: str, settings: Settings, *, force: bool = False,
                study_instance_uid: str | None = None) -> JobRecord:
        """Re-queue one stuck job and send it to the workers; ``study_instance_uid`` (the page's) must match."""
        now = self.clock()
        known = self.repo.job(job_id)
        if known is None or study_instance_uid not in (None, known.study_instance_uid):
            raise NotFoundError(f"job {job_id} does not exist" + (f" in study {study_instance_uid}"
                                                                  if study_instance_uid else ""))
        study_instance_uid = known.study_instance_uid
        try:
            job = requeue_and_dispatch(self.repo, self.dispatcher, self.spool_dir, job_id, who, now,
                                       settings=settings, force=force)
        except LedgerStateError as exc:
            self.repo.audit("web-requeue-refused", now, peer=who, study_instance_uid=study_instance_uid,
                            detail=exc.message)
            raise ConflictError(exc.message) from exc
        except (OSError, NodeError) as exc:
            detail = f"job {job_id} re-queued in the ledger but not handed to the workers: {exc}"
            self.repo.audit("web-requeue", now, peer=who, study_instance_uid=study_instance_uid, detail=detail)
            raise UnavailableError(detail + " (the broker is unreachable; re-queue it again, forced, once it is "
                                   "back)") from exc
        self.repo.audit("web-requeue", now, peer=who, study_instance_uid=job.study_instance_uid,
                        detail=f"job {job.id} handed to the workers again" + (" (forced)" if force else ""))
        logger.info("re-queue requested by %s: job %d sent again", who, job.id)
        return job
