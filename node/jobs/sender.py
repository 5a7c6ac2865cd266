"""Send the process task from a process that is no worker (the listener): a small Celery app, send-only.

It carries the worker's broker settings (:func:`node.jobs.celery_app.production_settings`: the embedded
filesystem broker under the spool, or Redis) and sends ``ainode.process_study`` by name, so the listener imports
neither the tasks nor the imaging stack.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from node.config import Settings
from node.jobs.broker import resolve_broker
from node.jobs.celery_app import production_settings
from node.vocabulary import PROCESS_TASK


def process_sender(settings: Settings, broker: str | None = None) -> Callable[[int, str, str, str], None]:
    """A function sending ``ainode.process_study(job_id, study_uid, study_dir, out_dir)`` to ``settings``' queue."""
    app = Celery("ainode-sender", set_as_current=False)
    app.conf.update(production_settings(resolve_broker(settings, broker), settings))

    def send(job_id: int, study_instance_uid: str, study_dir: str, out_dir: str) -> None:
        app.send_task(PROCESS_TASK, args=(job_id, study_instance_uid, study_dir, out_dir), queue=settings.queue)

    return send
