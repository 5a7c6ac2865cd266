"""Real ``ainode serve`` processes under faults: start one on a spool, find its worker and everything the worker
started, send studies, read its ledger, and make sure nothing a test started outlives it.

Everything polls with deadlines (:func:`wait_for`); processes are found through ``/proc`` (Linux), by pid and
process group, and orphans by their command line, which names the node's spool.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from node.ledger.db import Ledger
from node.ledger.repository import AuditRecord, JobRecord, Repository, StudySnapshot
from tests.support.net import free_port
from tests.support.waiting import wait_for

__all__ = ["free_port", "wait_for"]  # re-exported for the chaos tests

ROOT = Path(__file__).resolve().parents[2]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def redis_reachable() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1):
            return True
    except OSError:
        return False


# -- processes ---------------------------------------------------------------------------------------------


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (``ainode serve`` starts its worker from a thread of its own)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]).split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and int(stat[2]) == pgid and stat[0] != "Z":
            out.append(int(entry.name))
    return out


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (a node's spool path: its worker, beat, pool)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            out.append(int(entry.name))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- DICOM -------------------------------------------------------------------------------------------------


def echo(port: int, calling: str = "PACS", called: str = "AINODE", timeout: float = 10.0) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def store(port: int, files: Sequence[Path], calling: str = "PACS") -> list[int]:
    """C-STORE ``files`` in one association; the response statuses (-1: no response, the association died)."""
    from pynetdicom import StoragePresentationContexts

    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        return [-1] * len(files)
    statuses = []
    try:
        for path in files:
            try:
                response = assoc.send_c_store(path)
            except RuntimeError:  # the association is gone (the listener was killed)
                statuses.append(-1)
                continue
            statuses.append(int(response.Status) if response and "Status" in response else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def study_uid(folder: Path) -> str:
    first = next(iter(sorted(folder.rglob("*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


# -- the node ----------------------------------------------------------------------------------------------


@dataclass
class ServeProcess:
    """``python -m node.cli serve`` on ``spool`` in a session of its own; logs in ``root``."""

    root: Path
    spool: Path
    port: int
    env: dict[str, str]
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _ledger: Ledger | None = field(default=None, repr=False)

    def start(self) -> ServeProcess:
        self.starts += 1
        out = (self.root / f"serve-{self.starts}.out").open("wb")
        err = (self.root / f"serve-{self.starts}.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--port", str(self.port), "--spool-dir", str(self.spool),
             *self.args],
            cwd=ROOT, env=self.env, stdout=out, stderr=err, start_new_session=True,
        )
        out.close()
        err.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("serve-*.*")))

    def worker_log(self) -> str:
        path = self.spool / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"ainode serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")

    def wait_listening(self, timeout: float = 90.0) -> None:
        def up() -> bool:  # the port answers, and serve printed its banner (its listener processes all started)
            self.check_running()
            banner = self.root / f"serve-{self.starts}.out"
            return echo(self.port) and banner.is_file() and "listening on" in banner.read_text(errors="replace")

        wait_for(up, timeout, f"the listener on port {self.port}", interval=0.5)

    def worker_pid(self) -> int | None:
        """The worker among serve's children (the others are its listener processes)."""
        kids = children(self.pid) if self.proc is not None and self.proc.poll() is None else []
        workers = [kid for kid in kids if b"node.cli.worker" in _cmdline(kid)]
        return workers[0] if workers else None

    def wait_worker_ready(self, timeout: float = 120.0, after: int = 0) -> int:
        """Wait until the worker logged ready ``after`` + 1 times in all; its pid."""
        def ready() -> int | None:
            self.check_running()
            return self.worker_pid() if self.worker_log().count(" ready.") > after else None

        return int(wait_for(ready, timeout, f"the worker ready (log {self.spool / 'worker.log'})", interval=0.5))

    def node_processes(self) -> list[int]:
        """The worker, its pool and beat processes of this node, wherever they were re-parented."""
        return processes_naming(str(self.spool / ".run"))

    def pool_processes(self) -> list[int]:
        worker = self.worker_pid()
        return [] if worker is None else children(worker)

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM to the serve process group, as a container stop does; the seconds until it exited."""
        assert self.proc is not None
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL of the serve process alone (not its worker)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def cleanup(self) -> None:
        """Teardown: SIGKILL whatever of this node is left (by pid; each found through the spool's path)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        for pid in self.node_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._ledger is not None:
            self._ledger.dispose()

    # the ledger (SQLite in the spool unless the test set AINODE_DATABASE_URL)

    @property
    def repo(self) -> Repository:
        if self._ledger is None:
            url = self.env.get("AINODE_DATABASE_URL") or f"sqlite:///{self.spool / 'ledger.sqlite3'}"
            self._ledger = Ledger.open(url, create=False)
        return Repository(self._ledger)

    def study(self, uid: str) -> StudySnapshot | None:
        return self.repo.study(uid)

    def jobs(self, uid: str) -> list[JobRecord]:
        return self.repo.jobs(uid)

    def audit(self, uid: str | None = None) -> list[AuditRecord]:
        return self.repo.audit_trail(uid)


def node_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any ``AINODE_*`` variable, plus ``extra``; the shipped
    demonstration models are allowed (``ainode serve`` refuses them otherwise)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    env.update({"PYTHONUNBUFFERED": "1", "AINODE_POLL_INTERVAL": "2", "AINODE_ALLOW_DEMO_MODELS": "1"})
    env.update(extra)
    return env


def redis_env() -> Iterator[dict[str, str]]:
    """Broker variables for Redis at 127.0.0.1:6379 with a unique key prefix and queue; keys deleted after."""
    if not redis_reachable():
        pytest.skip(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    import redis

    run = uuid.uuid4().hex[:10]
    prefix = f"ainode-chaos-{run}:"
    yield {"AINODE_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0", "AINODE_BROKER_KEY_PREFIX": prefix,
           "AINODE_QUEUE": f"ainode-chaos-{run}"}
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    keys = list(client.scan_iter(match=f"{prefix}*")) + list(client.scan_iter(match=f"*ainode-chaos-{run}*"))
    if keys:
        client.delete(*keys)
    client.close()
