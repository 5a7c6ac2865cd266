"""Recovery of jobs a killed worker took with it (embedded broker): find them and send them again.

The embedded broker has no server-side visibility timeout: a SIGKILL of the worker's main process loses the
messages it had reserved. At the start of the *only* worker of a spool (``ainode worker --recover``), every
``queued``/``processing`` job whose message is not waiting in the broker's folder is sent again; jobs are
idempotent (a ``processing`` job is simply run again).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path

from node.ledger.repository import Repository
from node.ledger.states import JobState, StudyState
from node.spool import result_dir, uid_key
from node.vocabulary import PROCESS_TASK

logger = logging.getLogger(__name__)


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


