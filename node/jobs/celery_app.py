"""The Celery application of the node and its production settings (one block, each setting says why).

``celery -A node.jobs.celery_app worker`` and ``ainode worker`` both use :data:`app`. It is configured at import
from the environment (``AINODE_*``, the same variables :class:`node.config.Settings` reads), so every process
of a worker, including forked pool processes, sees one configuration; :func:`configure` re-applies it with
explicit values (``ainode worker --broker URL``).

Results live in the ledger (jobs, deliveries, audit events), not in a Celery result backend: there is none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from node import log
from node.config import Settings, parse_count, parse_seconds
from node.jobs.broker import BrokerConfig, resolve_broker

logger = logging.getLogger(__name__)

QUEUE_ENV = "AINODE_QUEUE"
SOFT_LIMIT_ENV = "AINODE_TASK_SOFT_TIME_LIMIT"
HARD_LIMIT_ENV = "AINODE_TASK_TIME_LIMIT"
POLL_ENV = "AINODE_POLL_INTERVAL"
DEFAULT_QUEUE = "ainode"

app = Celery("ainode", include=["node.jobs.tasks"])


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return parse_seconds(env[name], f"environment variable {name}") if name in env else default


def production_settings(broker: BrokerConfig, env: Mapping[str, str], concurrency: int = 1) -> dict[str, Any]:
    """The worker settings; every value cites the Celery documentation's configuration reference."""
    soft = _seconds(env, SOFT_LIMIT_ENV, 1500.0)
    hard = _seconds(env, HARD_LIMIT_ENV, max(soft + 60.0, 1800.0))
    poll = _seconds(env, POLL_ENV, 5.0)
    return {
        "broker_url": broker.url,
        # visibility_timeout / global_keyprefix (Redis) or the folders of the embedded broker (broker.py)
        "broker_transport_options": broker.transport_options,
        # keep retrying the broker at start-up instead of crashing when Redis comes up after the worker
        # (the default changes in Celery 6; set explicitly to silence the deprecation and fix the behaviour)
        "broker_connection_retry_on_startup": True,
        # JSON only: tasks take ids and paths; pickle would execute whatever a broker peer sends
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # no result backend: outcomes are recorded in the ledger, so nothing to store or expire
        "result_backend": None,
        "task_ignore_result": True,
        "result_expires": 3600,  # only matters if someone adds a backend; don't keep results for a day
        # acknowledge after the task ran, and requeue if the process running it dies (SIGKILL, OOM killer):
        # a study is processed at least once; the tasks are idempotent (docs/jobs.md)
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # a connection loss cancels running acks_late tasks: the broker redelivers them anyway, so running
        # them on would only produce a second, concurrent run of the same job
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # reserve one message per process: a 10-minute study must not sit behind another in a prefetch buffer
        # where it would also be lost with its worker on the embedded broker
        "worker_prefetch_multiplier": 1,
        # a fresh process per study: SimpleITK / ANTs / xgboost memory does not pile up across jobs
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": concurrency,
        # soft limit raises SoftTimeLimitExceeded in the task (recorded as a failed job); the hard limit kills a
        # hung registration's process
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        # "started" state is visible in flower/inspect even without a result backend
        "task_track_started": True,
        "task_default_queue": env.get(QUEUE_ENV, DEFAULT_QUEUE),
        # UTC timestamps everywhere; the ledger stores POSIX seconds
        "enable_utc": True,
        "timezone": "UTC",
        # logging is ours (node.log, with correlation ids), see the setup_logging handler below
        "worker_hijack_root_logger": False,
        # no task events on the broker unless someone monitors them (celery -E turns them on)
        "worker_send_task_events": False,
        # each periodic message expires when the next one is due: while every worker is busy with a study, the
        # polls that pile up in the queue are discarded unrun instead of delaying the next job or delivery
        "beat_schedule": {
            "poll-ready-studies": {"task": "ainode.poll_ready", "schedule": poll, "options": {"expires": poll}},
            "deliver-due-results": {"task": "ainode.deliver", "schedule": max(poll, 30.0),
                                    "options": {"expires": max(poll, 30.0)}},
        },
    }


def configure(
    broker: str | None = None, *, concurrency: int = 1, env: Mapping[str, str] | None = None
) -> BrokerConfig:
    """(Re)configure :data:`app` from ``env`` (default: the process environment) and an explicit broker URL."""
    environ = os.environ if env is None else env
    settings = Settings.load(env=environ)
    resolved = resolve_broker(broker, spool_dir=settings.spool_dir, env=environ)
    app.conf.update(production_settings(resolved, environ, parse_count(concurrency, "concurrency")))
    return resolved


@setup_logging.connect
def _setup_logging(**_kwargs: Any) -> None:
    """Replace Celery's logging set-up by the node's (correlation ids, JSON unless ``AINODE_LOG_FORMAT=text``)."""
    log.configure(log.env_verbosity(1), default=log.LogFormat.JSON)


configure()
