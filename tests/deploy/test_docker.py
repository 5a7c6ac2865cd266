"""The compose deployment for real: the image built, ``deploy/compose.yaml`` up in a private Docker daemon, a study
through it from a C-STORE on the host to an SR and its companions back at a receiving AE on the host.

What it does, in order (each wait bounded; the phases' durations are printed):

1. a private ``dockerd`` (``tests/deploy/engine.py``; skipped with the reason where none can start: not root, no
   ``dockerd``/``debootstrap``); the base images without a registry (``deploy/local-images.sh``: debootstrap
   bookworm, Debian's Python 3.11, Redis and PostgreSQL);
2. the node's image from ``deploy/Dockerfile`` unchanged, on the local Python base; its size (<= 1.05 GB) and that
   the run-time venv holds no ``shap``/``numba``/``llvmlite`` nor compilers;
3. ``deploy/compose.yaml`` (copied beside a ``.env`` made from ``.env.example``) plus a test override: the local
   Redis/PostgreSQL images, health-check intervals of seconds, free host ports, the host's receiving AE reachable as
   ``host.docker.internal`` (``host-gateway``), a random PostgreSQL password; ``up --scale worker=2``;
4. C-ECHO to the published listener, ``/health``, ``/metrics`` (a wrong Bearer token refused), the dashboard login
   (wrong token 401, right token a session cookie), ``ainode status`` inside the listener container against the
   password-protected PostgreSQL;
5. one synthetic study by C-STORE; the worker container that takes the job is SIGKILLed (``docker kill``) mid-job;
   the study still completes: its SR (validated) and companions arrive at the host, ``ainode status`` says done;
6. ``down -v`` and the daemon stopped by its PID, also when something failed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.delivery.scu import send_files
from node.sr.validate import FAST_SR_CHECKS, validate_sr
from node.values import Destination
from tests.deploy.compose import COMPOSE_FILE, DOCKERFILE, ENV_EXAMPLE, ROOT
from tests.deploy.engine import CACHE, Engine, EngineUnavailable, start_engine
from tests.support.net import free_port
from tests.support.scp import StoreSCP
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

IMAGE = "bcbm-ainode:docker-test"
PYTHON_BASE = "local/python:3.11"
PROJECT = "ainodedockertest"
#: 1.0 GB (issue 15) plus the deep model's runtime (issue 13: onnxruntime's Python binding, ~35 MB once its C
#: library and tools are removed): docs/operations.md "Image size"
MAX_IMAGE_BYTES = 1_050_000_000
NODE_SERVICES = ("listener", "scheduler", "worker", "web")
TEST_SETTINGS = {  # the test's time scale (as in test_topology.py)
    "AINODE_QUIET_PERIOD_S": "2",
    "AINODE_POLL_INTERVAL": "2",
    "AINODE_BROKER_VISIBILITY_TIMEOUT": "10",
    "AINODE_MIN_FREE_DISK_BYTES": "100M",
}
JOB_TIMEOUT = 600.0  # processing on a shared 2-core machine plus Redis's redelivery of the killed worker's job


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    try:
        engine = start_engine()
    except EngineUnavailable as exc:
        pytest.skip(f"no private Docker daemon can be started here: {exc}")
    try:
        _remove_project(engine)  # what a run killed before its teardown left in the cached data root
        yield engine
    finally:
        engine.stop()


def _remove_project(engine: Engine) -> None:
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind, listing in (("container", ["ps", "-aq"]), ("volume", ["volume", "ls", "-q"]),
                          ("network", ["network", "ls", "-q"])):
        ids = engine.docker(*listing, "--filter", label).split()
        if ids:
            engine.docker(kind, "rm", *(["-f"] if kind == "container" else []), *ids, check=False)


class Project:
    """The compose project: ``docker-compose -p PROJECT -f compose.yaml -f compose.test.yaml ...``."""

    def __init__(self, engine: Engine, folder: Path) -> None:
        self.engine = engine
        self.folder = folder

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        argv = ["docker-compose", "--no-ansi", "-p", PROJECT, "-f", "compose.yaml", "-f", "compose.test.yaml",
                *args]
        return self.engine.run(argv, timeout, check, cwd=self.folder).stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service, timeout=60).split()

    def health(self, container: str) -> str:
        state = json.loads(self.engine.docker("inspect", "--format", "{{json .State}}", container))
        return str(state.get("Health", {}).get("Status") or state.get("Status"))

    def exec(self, service: str, *argv: str, timeout: float = 120) -> str:
        return self.compose("exec", "-T", service, *argv, timeout=timeout)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "80", timeout=120, check=False)


def _write_project(folder: Path, receiver_port: int, ports: dict[str, int], token: str, password: str) -> None:
    """compose.yaml as shipped, a .env made from .env.example, and the test's override."""
    folder.mkdir(parents=True)
    shutil.copy(COMPOSE_FILE, folder / "compose.yaml")
    values = {
        "POSTGRES_PASSWORD": password,
        "NODE_IMAGE": IMAGE,
        "DICOM_PORT": str(ports["dicom"]),
        "WEB_PORT": str(ports["web"]),
        "AINODE_DESTINATIONS": f"DEMOPACS@host.docker.internal:{receiver_port}",
        "AINODE_WEB_TOKEN": token,
        **TEST_SETTINGS,
    }
    lines = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        name = line.split("=", 1)[0].strip()
        lines.append(f"{name}={values.pop(name)}" if "=" in line and not line.startswith("#") and name in values
                     else line)
    lines += [f"{name}={value}" for name, value in values.items()]
    (folder / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")

    shipped = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    fast = {"interval": "3s", "start_period": "5s"}
    node_service: dict[str, Any] = {
        "environment": {"AINODE_ALLOW_DEMO_MODELS": "1"},  # serve refuses the shipped demo models without it
        "extra_hosts": ["host.docker.internal:host-gateway"],  # the receiving AE on the host
    }
    override: dict[str, Any] = {"services": {
        "redis": {"image": "local/redis:7", "command": [*shipped["redis"]["command"], "--protected-mode", "no"],
                  "healthcheck": fast},
        "postgres": {"image": "local/postgres:15", "healthcheck": fast},
        "listener": {**node_service, "build": {"context": str(ROOT), "dockerfile": str(DOCKERFILE)},
                     "healthcheck": fast},
        "scheduler": node_service,
        "worker": {**node_service, "healthcheck": {"interval": "10s", "start_period": "5s"}},
        "web": {**node_service, "healthcheck": fast},
    }}
    (folder / "compose.test.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")


def _echo(port: int) -> int:
    ae = AE(ae_title="DEMOPACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    try:
        assert assoc.is_established, "the composed listener refused the association"
        status = assoc.send_c_echo()
        return int(status.Status)
    finally:
        assoc.release()


def _http(port: int, method: str, path: str, body: str | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode(
            errors="replace")
    finally:
        connection.close()


def _status(project: Project) -> list[dict[str, Any]]:
    studies: list[dict[str, Any]] = json.loads(project.exec("listener", "ainode", "status", "--json"))
    return studies


class Phases:
    """Wall-clock time per phase, printed at the end (``-s`` or a failure shows them)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.times: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self.start))
        self.start = now
        print(f"docker test: {name}: {self.times[-1][1]:.0f} s", flush=True)


def test_compose_deployment_in_docker(heavy_deployment_lock: None, engine: Engine, tmp_path: Path) -> None:
    phases = Phases()
    engine.run([str(ROOT / "deploy" / "local-images.sh"), "--cache", str(CACHE)], 900)
    phases.done("local base images")
    previous = engine.docker("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).strip()
    engine.run(["docker", "build", "-q", "-f", str(DOCKERFILE), "--build-arg", f"PYTHON_IMAGE={PYTHON_BASE}",
                "-t", IMAGE, str(ROOT)], 1800)
    if previous and previous != engine.docker("image", "inspect", "--format", "{{.Id}}", IMAGE).strip():
        # the previous build's image only: `image prune` would also drop the builder stage, the next build's cache
        engine.docker("rmi", previous, check=False)
    phases.done("node image")

    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", IMAGE))
    print(f"docker test: image {IMAGE}: {size / 1e6:.0f} MB", flush=True)
    assert size <= MAX_IMAGE_BYTES, f"the node's image is {size / 1e9:.2f} GB"
    leftovers = engine.docker("run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
                              "ls /opt/ainode/venv/lib/python3.11/site-packages; command -v gcc cc || true")
    for name in ("shap", "numba", "llvmlite", "gcc", "/cc"):
        assert name not in leftovers.split() and not any(w.endswith(name) for w in leftovers.split()), name

    receiver = StoreSCP(tmp_path / "pacs", free_port(), ae_title="DEMOPACS", bind_address="0.0.0.0").start()
    ports = {"dicom": free_port(), "web": free_port()}
    token = secrets.token_hex(16)
    _write_project(tmp_path / "deploy", receiver.port, ports, token, secrets.token_urlsafe(18))
    project = Project(engine, tmp_path / "deploy")
    try:
        project.compose("up", "-d", "--no-build", "--scale", "worker=2", timeout=420)
        workers = project.containers("worker")
        assert len(workers) == 2, workers
        every = [c for s in (*NODE_SERVICES, "redis", "postgres") for c in project.containers(s)]
        scheduler = project.containers("scheduler")

        def all_healthy() -> bool:
            return all(project.health(c) == ("running" if c in scheduler else "healthy") for c in every)

        wait_for(all_healthy, 300, lambda: f"every service healthy:\n{project.logs()}", interval=2)
        phases.done("compose up, every service healthy")

        assert _echo(ports["dicom"]) == 0x0000
        status, _, body = _http(ports["web"], "GET", "/health")
        assert status == 200, body
        status, _, metrics = _http(ports["web"], "GET", "/metrics")  # public, without the calling AE titles
        assert status == 200 and "# TYPE ainode_" in metrics, metrics[:500]
        assert _http(ports["web"], "GET", "/metrics", headers={"Authorization": "Bearer not-the-token"})[0] == 401
        status, _, metrics = _http(ports["web"], "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and "# TYPE ainode_" in metrics, metrics[:500]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        wrong = urllib.parse.urlencode({"token": "not-the-token", "next": "/studies"})
        assert _http(ports["web"], "POST", "/login", wrong, form)[0] == 401
        right = urllib.parse.urlencode({"token": token, "next": "/studies"})
        status, headers, _ = _http(ports["web"], "POST", "/login", right, form)
        assert status == 303 and "set-cookie" in headers, (status, headers)
        cookie = headers["set-cookie"].split(";", 1)[0]
        status, _, page = _http(ports["web"], "GET", "/studies", headers={"Cookie": cookie})
        assert status == 200, page[:500]
        assert _status(project) == []  # ainode status reaches the password-protected PostgreSQL
        phases.done("echo, health, metrics, login, status")

        from node.synth.generate import generate_cohort

        studies = tmp_path / "studies"
        generate_cohort(studies, 1, 7, size="small")
        files = sorted(studies.rglob("*.dcm"))
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        send_files(files, Destination("AINODE", "127.0.0.1", ports["dicom"]), calling_ae="DEMOPACS")

        def running_on() -> str | None:  # the worker running the job: "job N: run K" (the node logs to stderr)
            for container in workers:
                logs = engine.run(["docker", "logs", container], 60, check=False)
                if re.search(r'"logger": "node\.jobs\.tasks", "message": "job \d+: run \d+"', logs.stderr):
                    return container
            return None

        victim = wait_for(running_on, 300, lambda: f"a worker took the job:\n{project.logs()}", interval=0.5)
        engine.docker("kill", victim)
        [killed] = [s for s in _status(project) if s["study_instance_uid"] == uid]
        assert [j["state"] for j in killed["jobs"]] == ["processing"], killed  # killed mid-job, not after it
        assert not receiver.structured_reports()
        phases.done("study sent, the worker running it killed")

        def reported() -> bool:
            return bool(receiver.structured_reports()) and all(
                s["state"] == "done" for s in _status(project) if s["study_instance_uid"] == uid)

        wait_for(reported, JOB_TIMEOUT, lambda: f"the study's SR at the host:\n{project.logs()}", interval=5)
        phases.done("study completed after the kill")

        [report] = receiver.structured_reports()
        assert str(pydicom.dcmread(report, stop_before_pixels=True).StudyInstanceUID) == uid
        assert validate_sr(report, FAST_SR_CHECKS) == []
        # the companions are separate deliveries (one association each) and may still be on their way or retried
        # (a receiver that refuses an association for a moment gets the object again after the retry delay)
        wait_for(lambda: len(receiver.files) > 1, 120, "companion images at the host after the SR", interval=1)
        [study] = _status(project)
        assert study["state"] == "done" and [j["state"] for j in study["jobs"]] == ["done"], study
    except BaseException:
        with contextlib.suppress(Exception):
            print(project.logs())
        raise
    finally:
        receiver.stop()
        project.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
        phases.done("down -v")
