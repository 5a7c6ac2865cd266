"""Recovery of the jobs a killed worker held: leases renewed by a heartbeat, and a sweep that sends them again.

* **Lease.** A run of ``ainode.process_study`` claims its job (``node.ledger.leases.claim_job``, in
  :mod:`node.jobs.tasks`) under its Celery task id. The worker's *main* process renews the leases of the tasks it
  holds (running, or reserved with a retry countdown) every ``job_heartbeat_s`` (:class:`Heartbeat`): the main
  process only waits on the broker, so a study that keeps its pool process busy in C code for minutes never
  misses a beat, and a SIGKILL of the whole worker (or of its host) stops the beats at once.
* **Sweep.** The periodic ``ainode.poll_ready`` task calls :func:`recover_stalled`: a ``processing`` job whose
  lease is older than ``job_stale_after_s`` is released and its task sent again, so a killed worker's job runs
  again within about ``job_stale_after_s + poll_interval`` seconds on Redis and on the embedded broker alike
  (the Redis visibility timeout stays long: it only has to outlast the hard time limit). The old message, if it
  ever comes back, finds the job done or held and is dropped.
* **Cap.** A run still open when its job is claimed again, or when the sweep finds it stale, died with its
  process: after ``job_max_redeliveries`` such deaths (a study that runs its worker out of memory, or crashes
  it) the job fails with that reason instead of being sent again. A run open for longer than the hard time
  limit was killed by it: the job fails with that reason (the worker's main process normally records it at
  once, :func:`fail_timed_out`).
* **Unsent messages.** Every send records ``sent_at`` on the job (:func:`send_recorded`); a send that fails
  (broker unreachable when the listener or the poll queued the study) leaves it NULL, and the next poll sends the
  job again (:func:`resend_unsent`) instead of leaving the study queued until an operator re-queues it.
* **Embedded broker, one worker** (``ainode worker --recover``, which ``ainode serve`` uses): at start every
  ``queued``/``processing`` job whose message is not waiting in ``<spool>/broker/queue`` is sent again at once
  (:func:`redispatch_orphans`); no other worker can hold it then.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from node.config import Settings
from node.errors import NodeError
from node.ledger import leases
from node.ledger.repository import Repository
from node.ledger.states import JobState, StudyState
from node.spool import result_dir, uid_key
from node.vocabulary import PROCESS_TASK

logger = logging.getLogger(__name__)

SendTask = Callable[[int, str, str, str], object]


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


def send_recorded(repo: Repository, send_task: SendTask, job_id: int, uid: str, study_dir: Path, out_dir: Path,
                  at: float) -> bool:
    """Send the job's task and record it (``sent_at``); whether it was sent. A failed send is logged and left
    for the poll (:func:`resend_unsent`): the job stays queued with ``sent_at`` NULL, nothing is lost."""
    try:
        send_task(job_id, uid, str(study_dir), str(out_dir))
    except Exception as exc:  # noqa: BLE001 - any broker/client failure: the ledger keeps the job, the poll resends
        logger.error("job %d: its task could not be handed to the broker (%s: %s); the poll sends it again",
                     job_id, type(exc).__name__, exc)
        try:
            leases.mark_sent(repo, job_id, None)
        except (SQLAlchemyError, NodeError) as ledger_exc:
            logger.error("job %d: could not record the failed send: %s", job_id, ledger_exc)
        return False
    try:
        leases.mark_sent(repo, job_id, at)
    except (SQLAlchemyError, NodeError) as exc:  # sent, not recorded: the poll may send a duplicate, dropped
        logger.warning("job %d: sent, but the ledger did not record it (%s)", job_id, exc)
    return True


def _send(repo: Repository, send_task: SendTask, spool_dir: Path, job_id: int, uid: str, at: float) -> bool:
    return send_recorded(repo, send_task, job_id, uid, spool_dir / uid_key(uid), result_dir(spool_dir, uid, job_id),
                         at)


def resend_unsent(repo: Repository, spool_dir: Path, send_task: SendTask, now: float, settings: Settings) -> list[int]:
    """Send again every open job whose message never reached the broker (``sent_at`` NULL for longer than
    ``job_stale_after_s``); the ids sent. A duplicate (the send had worked, its record had not) is dropped by
    the job's lease (:func:`node.ledger.leases.claim_job`)."""
    resent = []
    for job in leases.unsent_jobs(repo, now, grace_s=settings.job_stale_after_s):
        if _send(repo, send_task, spool_dir, job.job_id, job.study_instance_uid, now):
            logger.warning("job %d: its task had not reached the broker: sent again", job.job_id)
            resent.append(job.job_id)
    return resent


def _release(repo: Repository, job_id: int, now: float, settings: Settings, *, force: bool) -> leases.Redelivery:
    decision, detail = leases.release_for_redelivery(
        repo, job_id, now, stale_after_s=settings.job_stale_after_s, resend_window_s=settings.hard_time_limit,
        max_redeliveries=settings.job_max_redeliveries, hard_limit_s=settings.hard_time_limit, force=force)
    if decision is leases.Redelivery.FAILED:
        logger.error("job %d failed: %s", job_id, detail)
    return decision


def recover_stalled(repo: Repository, spool_dir: Path, send_task: SendTask, now: float,
                    settings: Settings) -> list[int]:
    """Send again every ``processing`` job whose lease went stale (its worker died); the ids sent.

    Each is released in the ledger first (the dead run counted, ``job-redelivered`` audited), or failed there
    when its process died too often or it was killed at the hard time limit. A job that no worker of this
    release ever leased (``heartbeat_at`` NULL) counts as stalled only after the hard time limit.
    """
    resent = []
    stalled = leases.stalled_jobs(repo, now, stale_after_s=settings.job_stale_after_s,
                                  never_leased_after_s=settings.hard_time_limit)
    for job in stalled:
        if _release(repo, job.job_id, now, settings, force=False) is leases.Redelivery.RESEND and \
                _send(repo, send_task, spool_dir, job.job_id, job.study_instance_uid, now):
            logger.warning("job %d: its worker stopped renewing its lease (killed?): sent again", job.job_id)
            resent.append(job.job_id)
    return resent


def redispatch_orphans(
    repo: Repository, spool_dir: Path, waiting: set[int], send_task: SendTask, *,
    now: float | None = None, settings: Settings | None = None,
) -> list[int]:
    """Send again every ``queued``/``processing`` job whose message is not ``waiting`` in the broker.

    For the embedded broker, at the start of the *only* worker on a spool: a SIGKILL of the previous worker's
    main process lost the messages it had reserved (no server-side visibility timeout), and no other worker can
    hold a lease, so a processing job's lease is released however recently it was renewed. Never run it while
    another worker may hold messages.
    """
    settings = settings or Settings()
    at = time.time() if now is None else now
    resent = []
    open_states = [StudyState.RECEIVING, StudyState.READY, StudyState.QUEUED, StudyState.PROCESSING]
    for study in repo.studies(open_states):
        uid = study.study_instance_uid
        for job in repo.jobs(uid):
            if job.state not in (JobState.QUEUED, JobState.PROCESSING) or job.id in waiting:
                continue
            if job.state is JobState.PROCESSING and \
                    _release(repo, job.id, at, settings, force=True) is not leases.Redelivery.RESEND:
                continue
            if not _send(repo, send_task, spool_dir, job.id, uid, at):
                continue
            logger.warning("job %d (%s) had no message in the broker: sent again", job.id, job.state.value)
            resent.append(job.id)
    return resent


def fail_timed_out(repo: Repository, task_id: str, now: float, limit_s: float) -> int | None:
    """The run ``task_id`` was killed at the hard time limit: its job fails now with that reason (its id)."""
    job_id = leases.fail_leased_job(repo, task_id, now, leases.time_limit_reason(limit_s))
    if job_id is not None:
        logger.error("job %d failed: killed at the hard time limit (%g s)", job_id, limit_s)
    return job_id


class Heartbeat:
    """A thread of the worker's main process that renews the leases of the tasks ``held()`` names.

    :meth:`stopping` (a warm shutdown began) ends the open runs without counting them as deaths: a run the stop
    interrupts is sent again after its lease goes stale, and does not bring its job closer to the cap.
    """

    def __init__(self, repo: Repository, held: Callable[[], Iterable[str]], interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.held = held
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ainode-heartbeat", daemon=True)
        # No fork while this thread is inside the ledger: a pool process forked while it held one of SQLite's or
        # SQLAlchemy's locks inherits that lock taken, and hangs at its first ledger call (seen: a job "received"
        # that never started). The prefork pool waits for the beat to finish instead (milliseconds).
        self._in_ledger = threading.Lock()
        os.register_at_fork(before=self._in_ledger.acquire, after_in_parent=self._in_ledger.release,
                            after_in_child=self._in_ledger.release)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def beat(self) -> int:
        return leases.renew_leases(self.repo, set(self.held()), self.clock())

    def _run(self) -> None:
        interrupted = False
        while not self._stop.is_set():
            try:
                held = set(self.held())
                with self._in_ledger:
                    if self._stopping.is_set() and not interrupted:
                        leases.interrupt_attempts(self.repo, held)
                        interrupted = True
                    leases.renew_leases(self.repo, held, self.clock())
            except (SQLAlchemyError, NodeError) as exc:  # the ledger is down for a moment: the next beat may pass
                logger.warning("lease heartbeat failed: %s", exc)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def stopping(self) -> None:
        """A warm shutdown began: end the open runs (not deaths) at once, keep renewing until :meth:`stop`."""
        self._stopping.set()
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
