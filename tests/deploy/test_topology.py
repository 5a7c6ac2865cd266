"""The compose deployment as local processes: ``deploy/compose.yaml``'s services started with the commands and the
environment the file gives them, a study end to end, two workers sharing the load, and one of them SIGKILLed
mid-job without losing it.

Each process's argv and environment are read FROM THE COMPOSE FILE (``tests/deploy/compose.py``: ``command``,
``env_file`` = ``.env.example``, ``environment``). Replaced is only what a machine without Docker must replace:

* service host names: ``redis`` -> a ``redis-server`` started here on a free port with the compose file's own
  arguments (append-only file, noeviction); ``postgres`` -> a fresh, uniquely named database on the local server
  (127.0.0.1:5432, trust authentication, user ``postgres``), dropped afterwards;
* named volumes -> folders under ``tmp_path``; the image's ``/opt/ainode/app`` -> this checkout; container ports
  (11112, 8080) -> free ports on 127.0.0.1; a replica's container host name (Celery's ``%h``, ``$HOSTNAME``)
  -> ``worker-1`` / ``worker-2``;
* values an operator sets in ``.env`` for the site: the PACS (``AINODE_DESTINATIONS`` -> a receiving AE here),
  the dashboard token, and, for a test that has to finish in minutes, ``AINODE_QUIET_PERIOD_S`` and
  ``AINODE_POLL_INTERVAL`` (2 s), ``AINODE_BROKER_VISIBILITY_TIMEOUT`` (10 s: how soon Redis hands the killed
  worker's job to the other one) and ``AINODE_MIN_FREE_DISK_BYTES`` (the test disk is not the spool volume).

The health checks of the compose file are run as written against these processes (``redis-cli`` pointed at the
test port, ``pg_isready`` at the local server through ``PGHOST``), including one that must fail: the killed
worker's ``celery inspect ping``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy.engine import make_url

from node.delivery.scu import send_files
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import JobState, StudyState
from node.sr.validate import FAST_SR_CHECKS, validate_sr
from node.values import Destination
from tests.deploy.compose import ROOT, Service, healthcheck_argv, services
from tests.phi import assert_no_phi, patient_identifiers
from tests.support.net import free_port
from tests.support.scp import StoreSCP
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

WORKERS = ("worker-1", "worker-2")
IMAGE_APP = "/opt/ainode/app"  # where the Dockerfile puts the checkout
TEST_SETTINGS = {  # see the module docstring: site values and the test's time scale
    "AINODE_QUIET_PERIOD_S": "2",
    "AINODE_POLL_INTERVAL": "2",
    "AINODE_BROKER_VISIBILITY_TIMEOUT": "10",
    "AINODE_MIN_FREE_DISK_BYTES": "100M",
    "AINODE_ALLOW_DEMO_MODELS": "1",  # the stack runs the shipped demonstration models
}
# two small studies on a shared 2-core machine, one run twice; Redis hands the killed worker's message on after the
# visibility timeout plus up to ~100 s (kombu's restore sweep: unacked_restore_interval x unacked_restore_throttle)
JOB_TIMEOUT = 300.0


class Process:
    """One service as a process in its own process group, logging to a file; stopped (group-wide) at the end."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = logs / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(list(argv), cwd=logs, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with status {self.proc.returncode}:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole service (main process and its children), as a crash or the OOM killer would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # pool processes left behind by a main process
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AINODE_", "PG", "CELERY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python, celery, ainode
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)  # the image's working copy of the package
    return env


def _argv(command: Sequence[str]) -> list[str]:
    """The container's executable as this interpreter's module."""
    program, *rest = command
    if program == "ainode":
        return [sys.executable, "-m", "node.cli", *rest]
    if program == "celery":
        return [sys.executable, "-m", "celery", *rest]
    return [program, *rest]


@dataclass
class Stack:
    """The services of the compose file, running here."""

    tmp: Path
    spec: dict[str, Service]
    redis_port: int
    database_url: str
    receiver: StoreSCP
    ports: dict[int, int]  # container port -> host port
    processes: dict[str, Process]
    web_token: str

    def volume(self, name: str) -> Path:
        path = self.tmp / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def rewrite(self, service: Service, text: str, hostname: str | None = None) -> str:
        """Container paths, host names and ports -> their local stand-ins."""
        for volume, target in service.volumes.items():
            text = text.replace(target, str(self.volume(volume)))
        text = text.replace(IMAGE_APP, str(ROOT))
        text = text.replace("redis://redis:6379/", f"redis://127.0.0.1:{self.redis_port}/")
        if hostname is not None:
            text = text.replace("%h", hostname)
        return text

    def node_env(self, service: Service, hostname: str | None = None) -> dict[str, str]:
        env = _base_env()
        for name, value in service.environment.items():
            env[name] = self.rewrite(service, value, hostname)
        url = make_url(service.environment["AINODE_DATABASE_URL"])
        assert url.host == "postgres", "the ledger is the compose file's postgres service"
        env["AINODE_DATABASE_URL"] = self.database_url
        env["AINODE_DESTINATIONS"] = f"{self.receiver_destination}"
        env["AINODE_WEB_TOKEN"] = self.web_token
        env.update(TEST_SETTINGS)
        if hostname is not None:
            env["HOSTNAME"] = hostname
        return env

    @property
    def receiver_destination(self) -> Destination:
        return Destination("DEMOPACS", "127.0.0.1", self.receiver.port)

    def start(self, name: str, *, replica: str | None = None, extra_env: dict[str, str] | None = None) -> Process:
        service = self.spec[name]
        argv = [self.rewrite(service, arg, replica) for arg in service.command]
        if name == "web":
            argv = [a if a != "0.0.0.0" else "127.0.0.1" for a in argv]  # loopback, as published
        argv = [str(self.ports.get(int(a), a)) if a.isdigit() else a for a in argv]
        env = self.node_env(service, replica)
        env.update(extra_env or {})
        process = Process(replica or name, _argv(argv), env, self.tmp / "logs")
        self.processes[replica or name] = process
        return process

    def healthcheck(self, name: str, env: dict[str, str], replica: str | None = None,
                    rewrite: Callable[[str], str] = lambda s: s) -> subprocess.Popen[str]:
        """Start the service's compose health check (as Docker would run it inside the container)."""
        test = self.spec[name].healthcheck
        assert test is not None, f"{name} has no health check"
        argv = healthcheck_argv(test)
        argv = [rewrite(self.rewrite(self.spec[name], arg, replica)) for arg in argv]
        for container, host in self.ports.items():
            argv = [arg.replace(f"127.0.0.1:{container}", f"127.0.0.1:{host}").replace(
                f"127.0.0.1 {container}", f"127.0.0.1 {host}") for arg in argv]
        return subprocess.Popen(argv, env=env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def healthy(self, name: str, env: dict[str, str], replica: str | None = None,
                rewrite: Callable[[str], str] = lambda s: s) -> bool:
        check = self.healthcheck(name, env, replica, rewrite)
        check.communicate(timeout=60)
        return check.returncode == 0


def _create_database() -> tuple[Any, str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True,
                                connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    name = f"ainode_deploy_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return admin, name


@pytest.fixture
def stack(heavy_deployment_lock: None, tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Stack]:
    """redis, postgres, listener, scheduler, two workers and the dashboard, as compose.yaml describes them."""
    require_tool("redis-server")
    require_tool("redis-cli")
    require_tool("pg_isready")
    spec = services()
    (tmp_path / "logs").mkdir()
    admin, database = _create_database()
    receiver = StoreSCP(tmp_path / "pacs", ae_title="DEMOPACS").start()
    redis_port = free_port()
    stack = Stack(tmp_path, spec, redis_port, f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}", receiver,
                  {11112: free_port(), 8080: free_port()}, {}, secrets.token_hex(16))
    try:
        redis = spec["redis"]
        argv = [stack.rewrite(redis, arg) for arg in redis.command] + ["--port", str(redis_port),
                                                                         "--bind", "127.0.0.1"]
        stack.processes["redis"] = Process("redis", argv, _base_env(), tmp_path / "logs")
        redis_cli: Callable[[str], str] = lambda s: s.replace("redis-cli", f"redis-cli -p {redis_port}")  # noqa: E731
        wait_for(lambda: stack.healthy("redis", _base_env(), rewrite=redis_cli), 30, "redis healthy")
        pg_env = {**_base_env(), "PGHOST": "127.0.0.1", "PGPORT": "5432"}
        assert stack.healthy("postgres", pg_env), "pg_isready: the local PostgreSQL does not accept connections"

        listener = stack.start("listener", extra_env={"AINODE_PORT": str(stack.ports[11112]),
                                                      "AINODE_BIND_ADDRESS": "127.0.0.1"})

        def listener_healthy() -> bool:
            listener.check_alive()
            return stack.healthy("listener", listener.env)

        wait_for(listener_healthy, 90, f"listener healthy (C-ECHO; log {listener.log_path})", interval=0.5)
        stack.start("scheduler")  # depends_on: listener healthy (the ledger's tables exist)
        for replica in WORKERS:
            stack.start("worker", replica=replica)
        if "web" in _cli_commands():
            stack.start("web")
        yield stack
    finally:
        for process in reversed(list(stack.processes.values())):
            process.stop()
        receiver.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def _cli_commands() -> set[str]:
    import argparse

    from node.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _wait_for_log(process: Process, text: str, timeout: float) -> None:
    def logged() -> bool:
        process.check_alive()
        return text in process.log()

    wait_for(logged, timeout, f"{process.name}: {text!r} ({process.log_path})", interval=0.3)


def _study_files(root: Path, case: str) -> list[Path]:
    return sorted((root / case).rglob("*.dcm"))


def _started_on(repo: Repository, uid: str, event: str = "job-started") -> list[str]:
    """The worker names of the study's ``event`` audit events ("job N on worker@host")."""
    return [e.detail.rsplit(" on ", 1)[1] for e in repo.audit_trail(uid) if e.event == event and e.detail
            and " on " in e.detail]


def test_compose_services_as_processes_share_the_load_and_survive_a_killed_worker(
    stack: Stack, tmp_path: Path
) -> None:
    from node.synth.generate import generate_cohort

    studies = tmp_path / "studies"
    generate_cohort(studies, 2, 11, size="small")
    cases = ("case0000", "case0001")
    uids = [str(pydicom.dcmread(_study_files(studies, c)[0], stop_before_pixels=True).StudyInstanceUID)
            for c in cases]

    workers = [stack.processes[r] for r in WORKERS]
    for worker in workers:
        _wait_for_log(worker, " ready.", 120)
    scheduler = stack.processes["scheduler"]
    _wait_for_log(scheduler, "beat: Starting", 60)
    pings = [stack.healthcheck("worker", w.env, w.name) for w in workers]  # the compose health check, both replicas
    if "web" in stack.processes:
        web = stack.processes["web"]

        def web_healthy() -> bool:
            web.check_alive()
            return stack.healthy("web", web.env)

        wait_for(web_healthy, 90, f"dashboard healthy (GET /health; log {web.log_path})", interval=0.5)
    for worker, ping in zip(workers, pings, strict=True):
        output, _ = ping.communicate(timeout=90)
        assert ping.returncode == 0, f"health check of {worker.name}: {output}"

    # two studies from "the PACS", as a modality would send them
    node = Destination("AINODE", "127.0.0.1", stack.ports[11112])
    for case in cases:
        send_files(_study_files(studies, case), node, calling_ae="DEMOPACS")

    ledger = Ledger.open(stack.database_url, create=False)
    repo = Repository(ledger)
    try:
        # both workers take one study each: the job-started audit events name the two replicas
        def both_running() -> dict[str, str] | None:
            for process in (*workers, scheduler, stack.processes["listener"]):
                process.check_alive()
            owners = {uid: _started_on(repo, uid) for uid in uids}
            if all(len(names) == 1 for names in owners.values()):
                return {uid: names[0] for uid, names in owners.items()}
            return None

        owners = wait_for(both_running, JOB_TIMEOUT, "both studies started on a worker", interval=0.3)
        assert set(owners.values()) == {f"worker@{r}" for r in WORKERS}, owners

        # SIGKILL the worker running the second study while it holds the job
        victim_uid = uids[1]
        victim_name = owners[victim_uid].split("@", 1)[1]
        jobs = repo.jobs(victim_uid)
        assert len(jobs) == 1 and jobs[0].state is JobState.PROCESSING
        victim = stack.processes[victim_name]
        victim.kill()
        survivor = next(w for w in workers if w is not victim)
        dead_ping = stack.healthcheck("worker", victim.env, victim.name)  # must fail now

        def all_reported() -> bool:
            survivor.check_alive()
            return len(stack.receiver.structured_reports()) >= len(uids) and all(
                (s := repo.study(uid)) is not None and s.state is StudyState.DONE for uid in uids)

        wait_for(all_reported, JOB_TIMEOUT, f"an SR for every study ({survivor.log_path})", interval=0.5)

        # the killed worker's job was resumed by the survivor; every study ran as exactly one job
        assert _started_on(repo, victim_uid, "job-resumed") == [f"worker@{survivor.name}"]
        job_ids = []
        for uid in uids:
            jobs = repo.jobs(uid)
            assert len(jobs) == 1 and jobs[0].state is JobState.DONE, (uid, jobs)
            job_ids.append(jobs[0].id)
            assert any(e.event == "delivery-sent" for e in repo.audit_trail(uid))
        reports = stack.receiver.structured_reports()
        by_study = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in reports)
        assert by_study == sorted(uids)  # one SR per study, none lost, none duplicated
        for report in reports:
            assert validate_sr(report, FAST_SR_CHECKS) == []  # PixelMed's full check takes ~1 min per SR
        output, _ = dead_ping.communicate(timeout=90)
        assert dead_ping.returncode != 0, f"the killed worker still answered its health check: {output}"
    finally:
        ledger.dispose()

    # the broker persisted to its volume (append-only file), as compose.yaml promises
    assert any(stack.volume("redis").rglob("*.aof")), "redis wrote no append-only file"
    # the services log JSON lines carrying the job's correlation, and no patient's name or ID
    worker_logs = "\n".join(w.log() for w in workers)
    for job_id in job_ids:
        assert f'"job": "{job_id}"' in worker_logs
    logs = "\n".join(p.log() for p in stack.processes.values())
    assert_no_phi(logs, patient_identifiers(studies), allowed_words=["Synthetic"])
