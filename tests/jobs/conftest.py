"""Fixtures of the job-layer tests: a received study in a real ledger, tiny real model bundles, Celery worker
subprocesses on a real broker (embedded filesystem broker, or Redis at 127.0.0.1:6379) and a TCP fault proxy.
Polling is :func:`tests.support.waiting.wait_for`."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from node.config import ForceCompleteAction, Settings
from node.jobs.broker import BrokerConfig, resolve_broker
from node.jobs.celery_app import production_settings
from node.jobs.completeness import CompletenessChecker, CompletenessPolicy
from node.jobs.context import JobContext, JobOptions
from node.jobs.runner import dispatch_ready
from node.ledger.db import Ledger
from node.ledger.repository import JobRecord, Repository
from node.spool import result_dir
from node.values import Destination
from tests.scp.fixtures import FakeClock, ledger_url, send, sqlite_url, start
from tests.support.studies import synth_case
from tests.support.waiting import wait_for


def spool_settings(spool_dir: Path, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``env`` (as if it were the environment) with the spool in ``spool_dir``."""
    return Settings.load(env={**(env or {}), "AINODE_SPOOL_DIR": str(spool_dir)})


__all__ = ["start", "synth_case"]
__all__ += ["ledger_url", "sqlite_url"]  # tests/jobs/test_complete_event.py

ROOT = Path(__file__).resolve().parents[2]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


# -- models ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model set (subtype-noprimary + ER) trained by node.learn on a synthetic table whose columns are
    the pipeline's real 200 FEATURE_NAMES, so a real study's features fit."""
    from node.model.tasks import Task
    from tests.model_factory import train_tiny_bundles

    root = tmp_path_factory.mktemp("job-models")
    return train_tiny_bundles(root, (Task.SUBTYPE_NOPRIMARY, Task.ER), k=6, learning_rate=0.2)


# -- a node: spool, ledger, a received and dispatched study ------------------------------------------------


@dataclass
class Node:
    """A node's spool and ledger under tmp_path, with the small synthetic study received by a real listener."""

    root: Path
    spool_dir: Path
    database_url: str
    repo: Repository
    clock: FakeClock
    models_dir: Path
    sent: list[tuple[int, str, str, str]] = field(default_factory=list)

    def context(self, destinations: tuple[Destination, ...] = ()) -> JobContext:
        return JobContext(self.repo, JobOptions(destinations, self.models_dir, True, self.spool_dir), self.clock)

    def dispatch(self) -> list[JobRecord]:
        """The completeness check + dispatch, recording the (job id, uid, study dir, out dir) handed over."""
        from node.imaging.series_rules import load_rules

        checker = CompletenessChecker(self.repo, load_rules(), CompletenessPolicy(0.0, 600.0,
                                      ForceCompleteAction.FAIL), self.spool_dir)
        return dispatch_ready(self.repo, checker, self.clock(), lambda *a: self.sent.append(a), self.spool_dir)

    def job(self, job_id: int) -> JobRecord:
        return next(j for uid in self.uids() for j in self.repo.jobs(uid) if j.id == job_id)

    def uids(self) -> list[str]:
        return [s.study_instance_uid for s in self.repo.studies()]

    def worker_env(self) -> dict[str, str]:
        return {
            "AINODE_SPOOL_DIR": str(self.spool_dir),
            "AINODE_DATABASE_URL": self.database_url,
            "AINODE_MODELS_DIR": str(self.models_dir),
        }


@pytest.fixture
def node(tmp_path: Path, start: Callable[..., Any], synth_case: Any, models_dir: Path) -> Iterator[Node]:
    """The synthetic study C-STOREd to a real listener (spool + SQLite ledger), not yet dispatched."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    clock = FakeClock()
    listener = start(url, clock, quiet_period_s=0)
    assert set(send(listener.port, synth_case.all)) == {0}
    ledger = Ledger.open(url)
    yield Node(tmp_path, tmp_path / "spool", url, Repository(ledger), clock, models_dir)
    ledger.dispose()


@pytest.fixture
def dispatched(node: Node) -> tuple[Node, tuple[int, str, str, str]]:
    """``node`` with its study dispatched: one queued job and the task arguments it was handed to."""
    jobs = node.dispatch()
    assert len(jobs) == 1 and len(node.sent) == 1
    return node, node.sent[0]


# -- brokers -----------------------------------------------------------------------------------------------


def _redis_reachable() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerUnderTest:
    name: str
    env: dict[str, str]  # AINODE_BROKER_* / AINODE_QUEUE for the worker and the client

    def config(self, spool_dir: Path) -> BrokerConfig:
        return resolve_broker(spool_settings(spool_dir, self.env))

    def client(self, spool_dir: Path) -> Celery:
        """A separate Celery app that only sends, configured like the workers."""
        app = Celery(f"test-client-{self.name}")
        app.conf.update(production_settings(self.config(spool_dir), Settings.load(env=self.env)))
        return app


def _redis_broker(visibility_timeout: float) -> Iterator[BrokerUnderTest]:
    if not _redis_reachable():
        pytest.skip(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    import redis

    run = uuid.uuid4().hex[:10]
    prefix = f"ainode-test-{run}:"
    yield BrokerUnderTest("redis", {
        "AINODE_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        "AINODE_BROKER_KEY_PREFIX": prefix,
        "AINODE_BROKER_VISIBILITY_TIMEOUT": str(visibility_timeout),
        "AINODE_QUEUE": f"ainode-test-{run}",
    })
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    keys = list(client.scan_iter(match=f"{prefix}*")) + list(client.scan_iter(match=f"*ainode-test-{run}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["embedded", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerUnderTest]:
    """The embedded filesystem broker (in the node's spool) or Redis with a unique key prefix and queue."""
    if request.param == "embedded":
        yield BrokerUnderTest("embedded", {"AINODE_QUEUE": f"ainode-test-{uuid.uuid4().hex[:10]}"})
    else:
        yield from _redis_broker(visibility_timeout=5.0)


@pytest.fixture
def redis_broker() -> Iterator[BrokerUnderTest]:
    yield from _redis_broker(visibility_timeout=4.0)


# -- worker subprocesses -----------------------------------------------------------------------------------


class Worker:
    """``python -m node.cli.worker`` in its own process group, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, concurrency: int = 1,
                 options: tuple[str, ...] = ()) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.worker", "--concurrency", str(concurrency),
             "--hostname", f"{name}@test", *options],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:  # the preload comes first (node.jobs.warm)
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return " ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} ready (log: {self.log_path})")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool processes) at once."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Teardown: SIGKILL the process group (pool processes included; nothing to finish gracefully)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start worker subprocesses: ``workers(node_env, broker_env, name=, concurrency=, options=(CLI options),
    **extra_env)``; all stopped at teardown."""
    started: list[Worker] = []

    def factory(node_env: dict[str, str], broker_env: dict[str, str], name: str = "w1", concurrency: int = 1,
                options: tuple[str, ...] = (), **extra: str) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
        env.update(node_env)
        env.update(broker_env)
        env.update(extra)
        env["PYTHONUNBUFFERED"] = "1"
        worker = Worker(name, env, tmp_path / f"worker-{name}.log", concurrency, options)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


# -- a TCP proxy that can refuse service (a database or peer "going down") ---------------------------------


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target; while ``down``, accepts and immediately closes connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.down = False
        self.refused = 0
        self.refused_at: list[float] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down:
                self.refused += 1
                self.refused_at.append(time.monotonic())
                conn.close()
                continue
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(timeout=5)


__all__ += ["BrokerUnderTest", "FaultProxy", "Node", "Worker", "result_dir"]
