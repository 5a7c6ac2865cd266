"""Sending tasks to the node's workers from the web process: a Celery client app that only publishes.

It is configured like the workers (:func:`node.jobs.celery_app.production_settings`: same broker, queue and JSON
serialiser) but is a separate app that sends tasks by name (:mod:`node.vocabulary`), so the web process never
imports or runs the task code.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from node.config import Settings
from node.errors import TransientError
from node.jobs.broker import BrokerConfig
from node.vocabulary import DELIVER_TASK, PROCESS_TASK


class CeleryDispatcher:
    def __init__(self, broker: BrokerConfig, node_settings: Settings) -> None:
        from node.jobs.celery_app import production_settings

        self.broker = broker
        self.app = Celery("ainode-web")
        settings = production_settings(broker, node_settings)
        settings.pop("beat_schedule")  # the web process never runs beat
        self.app.conf.update(settings)

    def _send(self, name: str, args: list[Any]) -> None:
        try:
            self.app.send_task(name, args=args)
        except (KombuError, OSError) as exc:
            raise TransientError(f"the broker {self.broker.describe()} cannot be reached: {exc}") from exc

    def process(self, job_id: int, study_instance_uid: str, study_dir: str, out_dir: str) -> None:
        self._send(PROCESS_TASK, [job_id, study_instance_uid, study_dir, out_dir])

    def deliver(self, job_id: int) -> None:
        self._send(DELIVER_TASK, [job_id])

    def close(self) -> None:
        self.app.close()
