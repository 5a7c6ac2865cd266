"""The Celery application of the node and its production settings (one block, each setting says why).

``ainode worker`` configures :data:`app` explicitly with the process's :class:`~node.config.Settings`
(:func:`configure`) before it starts the worker, so every forked pool process inherits one configuration.
``celery -A node.jobs.celery_app ...`` (the compose healthcheck, Flower) configures it on first use from the
environment (:meth:`Settings.load`), through a lazy ``add_defaults`` promise: importing this module reads
nothing.

Results live in the ledger (jobs, deliveries, audit events), not in a Celery result backend: there is none.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from celery.worker import heartbeat
from celery.worker.consumer import Consumer
from celery.worker.consumer import heart as heart_step

from node import log
from node.config import Settings
from node.jobs.broker import BrokerConfig, resolve_broker
from node.values import parse_count
from node.vocabulary import DELIVER_TASK, POLL_TASK, PURGE_TASK

PURGE_EVERY_S = 3600.0  # how often the scheduler runs retention (with retention_days set)

logger = logging.getLogger(__name__)


app = Celery("ainode", include=["node.jobs.tasks"])

#: The in-memory scheduler (no state file); see ``beat_scheduler`` in :func:`production_settings`.
BEAT_SCHEDULER = "celery.beat:Scheduler"


# Redis socket timeouts (kombu's Redis transport options, passed to redis-py). Without them a synchronous command on a
# broker that stops answering without closing the TCP connection (a paused, hung or partitioned Redis) blocks the
# worker's main loop for ever: it notices neither the loss nor a SIGTERM, and its warm shutdown lasts until the
# orchestrator's SIGKILL (compose: stop_grace_period 10m). A live Redis answers the node's commands in milliseconds;
# BRPOP waits 1 s server-side (kombu's brpop_timeout), well below socket_timeout. A shutdown with Redis hung costs a
# few socket timeouts (one per pending command: binding refresh, heartbeat, control and task consumers, ~40 s);
# tests/jobs/test_broker_loss.py stops a real redis-server under a worker and times its warm shutdown.
REDIS_SOCKET_TIMEOUTS: dict[str, float] = {
    "socket_connect_timeout": 5.0,  # a connection attempt to a host that does not answer gives up after 5 s
    "socket_timeout": 5.0,  # a command without a reply raises after 5 s: connection lost, reconnect (or exit)
}


class _Heartbeat(heartbeat.Heart):
    """Celery's worker heartbeat event (``worker-heartbeat`` every 2 s, for monitors such as Flower), sent once.

    Celery publishes it with ``retry=True`` and no retry limit: while the broker is unreachable the worker's main
    loop reconnects for ever inside the heartbeat timer and never gets to act on a SIGTERM. A heartbeat that cannot
    be sent is worth nothing a moment later; the consumer's own reconnection (bounded by the timeouts above, and
    interrupted by a shutdown) is what brings the worker back.
    """

    def _send(self, event: str, retry: bool = False) -> Any:
        return super()._send(event, retry=False)  # type: ignore[misc]  # (not in celery-types' stubs)


class _HeartStep(heart_step.Heart):
    """The consumer's heartbeat bootstep, with :class:`_Heartbeat`."""

    def start(self, c: Any) -> None:
        c.heart = _Heartbeat(c.timer, c.event_dispatcher, self.heartbeat_interval)  # type: ignore[attr-defined]
        c.heart.start()


class WorkerConsumer(Consumer):
    """Celery's consumer with the heartbeat of :class:`_Heartbeat` (setting ``worker_consumer``)."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[valid-type,misc]  # (a variable in celery-types' stubs)
        default_steps = tuple(f"{__name__}:_HeartStep" if step == "celery.worker.consumer.heart:Heart" else step
                              for step in Consumer.Blueprint.default_steps)


def production_settings(broker: BrokerConfig, settings: Settings, concurrency: int = 1) -> dict[str, Any]:
    """The worker settings; every value cites the Celery documentation's configuration reference."""
    soft = settings.task_soft_time_limit
    hard = settings.hard_time_limit
    poll = settings.poll_interval
    return {
        "broker_url": broker.url,
        # visibility_timeout / global_keyprefix (Redis) or the folders of the embedded broker (broker.py), and the
        # Redis socket timeouts above
        "broker_transport_options": {**broker.transport_options, **(
            REDIS_SOCKET_TIMEOUTS if broker.url.startswith(("redis://", "rediss://")) else {})},
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
        # a heartbeat event that is not retried for ever while the broker is unreachable (see _Heartbeat)
        "worker_consumer": f"{__name__}:WorkerConsumer",
        # reserve one message per process: a 10-minute study must not sit behind another in a prefetch buffer
        # where it would also be lost with its worker on the embedded broker
        "worker_prefetch_multiplier": 1,
        # warm pool processes (node.jobs.warm): a process keeps its imports, template, atlas and models across
        # jobs; the memory bound is its peak resident size instead, checked after each task (KiB; billiard reads
        # ru_maxrss), plus a task count as a safety net against slow leaks (None = no limit)
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024 or None,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        # a new pool process reports "up" after its worker_process_init (thread budget): allow a loaded machine
        # more than Celery's 4 s before the process is taken for hung and replaced
        "worker_proc_alive_timeout": 30.0,
        "worker_concurrency": concurrency,
        # soft limit raises SoftTimeLimitExceeded in the task (recorded as a failed job); the hard limit kills a
        # hung registration's process
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        # "started" state is visible in flower/inspect even without a result backend
        "task_track_started": True,
        "task_default_queue": settings.queue,
        # UTC timestamps everywhere; the ledger stores POSIX seconds
        "enable_utc": True,
        "timezone": "UTC",
        # logging is ours (node.log, with correlation ids), see the setup_logging handler below
        "worker_hijack_root_logger": False,
        # no task events on the broker unless someone monitors them (celery -E turns them on)
        "worker_send_task_events": False,
        # beat keeps its schedule in memory (celery.beat.Scheduler), never in a file: the default
        # PersistentScheduler is a pickle shelve ("celerybeat-schedule") that whoever can write its folder (the
        # spool, on NFS in multi-host set-ups) could use to run code in the scheduler. Our entries are fixed
        # intervals whose messages expire, so nothing is lost by forgetting the last run times at a restart.
        "beat_scheduler": BEAT_SCHEDULER,
        # each periodic message expires when the next one is due: while every worker is busy with a study, the
        # polls that pile up in the queue are discarded unrun instead of delaying the next job or delivery
        "beat_schedule": {
            "poll-ready-studies": {"task": POLL_TASK, "schedule": poll, "options": {"expires": poll}},
            "deliver-due-results": {"task": DELIVER_TASK, "schedule": max(poll, 30.0),
                                    "options": {"expires": max(poll, 30.0)}},
            # retention (node.retention), only when asked for: hourly, so a study goes at most an hour late
            **({"purge-expired-studies": {"task": PURGE_TASK, "schedule": PURGE_EVERY_S,
                                          "options": {"expires": PURGE_EVERY_S}}}
               if settings.retention_days is not None else {}),
        },
    }


_configured: list[Settings] = []
_verbosity: list[int] = []  # the log level the worker was started with, for its pool processes


def configure(settings: Settings, broker: str | None = None, *, concurrency: int = 1,
              verbosity: int | None = None) -> BrokerConfig:
    """Configure :data:`app` (and the tasks' retry policy) for ``settings``; ``broker`` overrides its broker.

    ``verbosity`` (``-v``) is the log level of the pool processes too (they inherit it when they fork).
    """
    from node.jobs import tasks

    resolved = resolve_broker(settings, broker)
    _configured[:] = [settings]
    _verbosity[:] = [] if verbosity is None else [verbosity]
    app.conf.update(production_settings(resolved, settings, parse_count(concurrency, "concurrency")))
    tasks.apply_settings(settings)
    return resolved


def _settings_on_first_use() -> dict[str, Any]:
    """``celery -A node.jobs.celery_app``: nobody called :func:`configure`; take the environment's settings."""
    if _configured:
        return {}
    settings = Settings.load()
    _configured.append(settings)
    return production_settings(resolve_broker(settings), settings)


app.add_defaults(_settings_on_first_use)  # a promise: evaluated when the configuration is first read


@setup_logging.connect
def _setup_logging(**_kwargs: Any) -> None:
    """Replace Celery's logging set-up by the node's (correlation ids, JSON unless ``AINODE_LOG_FORMAT=text``)."""
    log.configure(_verbosity[0] if _verbosity else log.env_verbosity(1), default=log.LogFormat.JSON)


