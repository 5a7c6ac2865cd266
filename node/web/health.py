"""``/health``: one check per dependency, run in parallel with short timeouts.

* ``database``: a ``SELECT 1`` on the ledger;
* ``broker``: Redis ``PING``, or for the embedded broker a file written to and removed from its queue folder;
* ``spool``: free disk space of the spool folder against ``min_free_disk_bytes`` (what the listener refuses at);
* ``destination <AET@HOST:PORT>``: a TCP connection to each configured destination.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from node.jobs.broker import BrokerConfig
from node.ledger.db import Ledger
from node.values import Destination

TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    duration_s: float


def _timed(name: str, probe: Callable[[], str]) -> Check:
    start = time.perf_counter()
    try:
        detail, ok = probe(), True
    except (OSError, SQLAlchemyError, ValueError) as exc:
        detail, ok = f"{type(exc).__name__}: {exc}".splitlines()[0][:300], False
    return Check(name, ok, detail, round(time.perf_counter() - start, 4))


def database_probe(ledger: Ledger) -> Callable[[], str]:
    def probe() -> str:
        with ledger.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return f"{ledger.engine.url.get_backend_name()} reachable"

    return probe


def broker_probe(broker: BrokerConfig, timeout_s: float = TIMEOUT_S) -> Callable[[], str]:
    def probe() -> str:
        if broker.embedded:
            folder = Path(broker.transport_options["data_folder_in"])
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-", suffix=".tmp"):
                pass
            return f"embedded broker folder {folder} writable"
        import redis

        client = redis.Redis.from_url(broker.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise OSError(f"Redis at {broker.describe()} does not answer: {exc}") from exc
        finally:
            client.close()
        return f"Redis at {broker.describe()} answers PING"

    return probe


def spool_probe(spool_dir: Path, min_free_bytes: int) -> Callable[[], str]:
    def probe() -> str:
        free = shutil.disk_usage(spool_dir).free
        detail = f"{free / 2**30:.2f} GiB free, minimum {min_free_bytes / 2**30:.2f} GiB"
        if free < min_free_bytes:
            raise OSError(f"spool disk nearly full: {detail}")
        return detail

    return probe


def destination_probe(destination: Destination, timeout_s: float = TIMEOUT_S) -> Callable[[], str]:
    def probe() -> str:
        with socket.create_connection((destination.host, destination.port), timeout=timeout_s):
            pass
        return "TCP connection accepted"

    return probe


def run_checks(ledger: Ledger, broker: BrokerConfig, spool_dir: Path, min_free_bytes: int,
               destinations: tuple[Destination, ...], timeout_s: float = TIMEOUT_S) -> list[Check]:
    probes: list[tuple[str, Callable[[], str]]] = [
        ("database", database_probe(ledger)),
        ("broker", broker_probe(broker, timeout_s)),
        ("spool", spool_probe(spool_dir, min_free_bytes)),
        *((f"destination {d}", destination_probe(d, timeout_s)) for d in destinations),
    ]
    pool = ThreadPoolExecutor(max_workers=min(8, len(probes)), thread_name_prefix="health")
    futures = [(name, pool.submit(_timed, name, probe)) for name, probe in probes]
    deadline = time.monotonic() + 2 * timeout_s + 1.0  # a probe that hangs (e.g. a DB connect) fails, not /health
    checks = []
    for name, future in futures:
        try:
            checks.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            checks.append(Check(name, False, f"no answer within {2 * timeout_s + 1.0:g} s", 2 * timeout_s + 1.0))
    pool.shutdown(wait=False)
    return checks
