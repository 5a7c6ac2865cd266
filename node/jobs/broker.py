"""Which message broker the job layer uses: Redis when one is configured, else an embedded one on disk.

Resolution, first match wins: an explicit URL (``ainode worker --broker URL``), then the setting
``broker_url`` (``AINODE_BROKER_URL``), then the **embedded broker**: kombu's filesystem transport in
``<spool_dir>/broker/`` (``filesystem://``), which needs no server at all.

Why the filesystem transport and not kombu's SQLAlchemy transport on a SQLite file (``sqla+sqlite:///``):

* a message is one file, written with an exclusive ``flock`` and taken with ``os.remove`` after reading, so two
  processes never take the same message and the queue never grows (the SQLAlchemy transport only flags taken
  rows ``visible = False`` and keeps them for ever);
* the SQLAlchemy transport polls SQLite from every consumer with ``SELECT ... FOR UPDATE`` inside its own
  transactions, which on SQLite serialises with the ledger's ``BEGIN IMMEDIATE`` writers and surfaces as
  "database is locked" under load, an extra failure mode the ledger was designed to avoid;
* with ``acks_late`` both transports keep the unacknowledged message inside the worker's main process and put
  it back when the pool process running it dies (``reject_on_worker_lost``), which is what
  ``tests/jobs/test_worker_faults.py`` checks; neither survives a SIGKILL of the worker's *main* process
  (there is no server-side visibility timeout). Use Redis where that matters (``docs/jobs.md``).

Redis options (settings): ``broker_visibility_timeout`` (``AINODE_BROKER_VISIBILITY_TIMEOUT``: seconds a taken,
unacknowledged message stays invisible before Redis hands it to another worker; default 7200 s, longer than the
hard task time limit so a running job is never delivered twice) and ``broker_key_prefix``
(``AINODE_BROKER_KEY_PREFIX``, default ``ainode:``, so several nodes or test runs can share one Redis database).
"""

from __future__ import annotations

import fcntl
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import Settings
from node.errors import ConfigError, TransientError

logger = logging.getLogger(__name__)

#: how often a consumer of the embedded broker looks for a message (kombu's default: 1 s)
POLLING_INTERVAL_S = 0.05
EMBEDDED_URL = "filesystem://localhost/"  # a host name only to keep kombu from warning "no hostname"
_SCHEMES = ("redis://", "rediss://", "redis+socket://", "filesystem://", "memory://")


@dataclass(frozen=True)
class BrokerConfig:
    """A broker URL plus the kombu transport options it needs."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    embedded: bool = False

    def describe(self) -> str:
        """The URL without any password, for logs."""
        if "@" in self.url and "://" in self.url:
            scheme, rest = self.url.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return self.url if not self.embedded else f"{self.url} ({self.transport_options['data_folder_in']})"


def embedded_broker(folder: Path) -> BrokerConfig:
    """The filesystem transport in ``folder`` (created): ``queue/`` for messages, ``control/`` for fanout; each
    message written whole before a consumer can see it (:mod:`node.jobs.atomic_filesystem`)."""
    from node.jobs.atomic_filesystem import install

    install()
    queue = folder / "queue"
    control = folder / "control"
    for path in (queue, control):
        path.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),  # producer and consumer share one folder: it *is* the queue
        "control_folder": str(control),  # fanout exchanges (celery's remote-control "pidbox")
        "store_processed": False,  # taken messages are deleted, not archived
        # kombu's virtual transports look for a message once a second by default: a job (and then its delivery)
        # waited up to 1 s each in the folder. A listing of the queue folder every 50 ms costs the worker's main
        # process ~0.1 % of a core (tests/jobs: issue 12, dispatch on the event)
        "polling_interval": POLLING_INTERVAL_S,
    }
    return BrokerConfig(EMBEDDED_URL, options, embedded=True)


QUARANTINE_DIRNAME = "quarantine"


def _unreadable(path: Path) -> bool:
    """Whether ``path`` (a message or exchange table of the filesystem transport) cannot be parsed as JSON.

    A file another process is writing right now holds kombu's exclusive ``flock``: it is left alone (``False``).
    """
    try:
        with path.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # being written (kombu holds LOCK_EX while it writes)
            try:
                json.loads(handle.read().decode("utf-8"))
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        return False  # taken by a consumer meanwhile
    except (OSError, UnicodeDecodeError, ValueError):
        return True
    return False


def quarantine_unreadable(config: BrokerConfig) -> list[Path]:
    """Move the embedded broker's files that cannot be parsed out of kombu's way; returns where they went.

    A message (``queue/*.msg``) or exchange table (``control/*.exchange``) left half-written by a full disk or a
    crash makes kombu's filesystem transport raise ``JSONDecodeError`` in the consumer, and the worker stops at
    every start ("Unrecoverable error"). Run before the worker starts: each such file is moved to
    ``<broker>/quarantine/`` with a warning (an exchange table is rebuilt by kombu when the worker binds its
    queue again; a lost message's job is re-sent by the recovery sweep, ``node.jobs.recovery``). Nothing to do for
    Redis.
    """
    if not config.embedded:
        return []
    queue = Path(config.transport_options["data_folder_in"])
    control = Path(config.transport_options["control_folder"])
    quarantine = queue.parent / QUARANTINE_DIRNAME
    moved = []
    candidates = [*sorted(queue.glob("*.msg")), *sorted(control.glob("*.exchange"))]
    for path in candidates:
        if not _unreadable(path):
            continue
        quarantine.mkdir(exist_ok=True)
        target = quarantine / f"{path.parent.name}-{path.name}"
        try:
            path.replace(target)
        except FileNotFoundError:
            continue
        except OSError as exc:  # cannot move it (e.g. read-only): remove it, the worker must start
            logger.warning("embedded broker: unreadable file %s cannot be moved (%s): removed", path, exc.strerror)
            path.unlink(missing_ok=True)
            continue
        logger.warning("embedded broker: unreadable file %s (half-written by a full disk or a crash?) moved to %s",
                       path.name, target)
        moved.append(target)
    return moved


def redis_broker(url: str, visibility_timeout_s: float, key_prefix: str) -> BrokerConfig:
    options: dict[str, Any] = {"visibility_timeout": visibility_timeout_s, "global_keyprefix": key_prefix}
    return BrokerConfig(url, options)


def resolve_broker(settings: Settings, explicit: str | None = None) -> BrokerConfig:
    """The broker to use: ``explicit`` > ``settings.broker_url`` > the embedded broker under the spool."""
    url = (explicit or settings.broker_url or "").strip()
    if not url or url in ("filesystem://", EMBEDDED_URL):
        return embedded_broker(settings.spool_dir / "broker")
    if not url.startswith(_SCHEMES):
        raise ConfigError(f"broker URL {url.split('://')[0]}://... is not supported (use redis://HOST:PORT/DB)")
    if url.startswith(("redis", "rediss")):
        return redis_broker(url, settings.broker_visibility_timeout, settings.broker_key_prefix)
    return BrokerConfig(url)


_REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priorities 3, 6, 9 in lists "<queue>\x06\x16<n>"
_REDIS_PRIORITIES = (0, 3, 6, 9)


def queue_depth(config: BrokerConfig, queue: str, *, timeout_s: float = 2.0) -> int:
    """Messages waiting in ``queue`` (not yet taken by a worker): ``*.<queue>.msg`` files of the embedded broker,
    or the length of the queue's Redis lists. Raises :class:`TransientError` when the broker cannot be read."""
    if config.embedded:
        folder = Path(config.transport_options["data_folder_in"])
        wanted = f"{queue}.msg"
        try:
            return sum(1 for path in folder.iterdir() if path.name.partition(".")[2] == wanted)
        except OSError as exc:
            raise TransientError(f"the embedded broker folder {folder} cannot be read: {exc.strerror}") from exc
    if not config.url.startswith(("redis://", "rediss://", "redis+socket://")):
        raise ConfigError(f"queue depth is not available for broker {config.describe()}")
    import redis

    prefix = str(config.transport_options.get("global_keyprefix", ""))
    keys = [prefix + (queue if p == 0 else f"{queue}{_REDIS_PRIORITY_SEP}{p}") for p in _REDIS_PRIORITIES]
    client = redis.Redis.from_url(config.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return sum(int(client.llen(key)) for key in keys)
    except redis.RedisError as exc:
        raise TransientError(f"the broker {config.describe()} cannot be reached: {exc}") from exc
    finally:
        client.close()
