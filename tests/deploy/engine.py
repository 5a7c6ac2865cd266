"""A private Docker daemon for the tests: started here, on its own socket, stopped by its PID afterwards.

No Docker daemon runs on the test machines and no registry is reachable; as root, ``dockerd`` runs with its own
``--data-root`` (kept between runs in :data:`CACHE`, so the base images, the node's image and the build cache
survive: a rerun takes seconds), ``--exec-root``, ``--pidfile`` and ``--host unix://...``. The daemon gets
``PR_SET_PDEATHSIG``: it receives SIGTERM when the test process dies, however it dies, so no run can leave it
behind; on SIGTERM it stops its containers. Images are built with the classic builder (``DOCKER_BUILDKIT=0``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("/var/cache/ainode-docker")  # the debootstrap tarball and the daemon's data root
RUN = Path("/run/ainode-docker-test")  # the socket, pid file and exec root (short: unix socket paths are limited)
TOOLS = ("dockerd", "docker", "docker-compose", "debootstrap", "containerd")


class EngineUnavailable(Exception):
    """No private Docker daemon can be started here (the reason is the message)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Engine:
    """A running private ``dockerd``."""

    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment for ``docker`` / ``docker-compose`` commands that talk to this daemon."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
        return env

    def run(self, argv: Sequence[str], timeout: float, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.run(["docker", *args], timeout, check).stdout

    def stop(self) -> None:
        """SIGTERM (the daemon stops its containers), then SIGKILL if it has not exited within 60 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def missing_reason() -> str | None:
    """Why no private daemon can be started here, or None."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install docker.io docker-compose debootstrap)"
    return None


def start_engine(timeout: float = 60) -> Engine:
    """Start the private daemon and wait until it answers; :class:`EngineUnavailable` if it cannot run here."""
    reason = missing_reason()
    if reason:
        raise EngineUnavailable(reason)
    pidfile = RUN / "dockerd.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().strip())
            if Path(f"/proc/{pid}").exists():
                raise EngineUnavailable(f"another private dockerd (PID {pid}) uses {RUN}")
    RUN.mkdir(parents=True, exist_ok=True)
    (CACHE / "daemon").mkdir(parents=True, exist_ok=True)
    socket = RUN / "docker.sock"
    log = RUN / "dockerd.log"
    argv = ["dockerd", "--data-root", str(CACHE / "daemon"), "--exec-root", str(RUN / "exec"),
            "--pidfile", str(pidfile), "--host", f"unix://{socket}"]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_die_with_parent)
    engine = Engine(process, socket, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise EngineUnavailable(f"dockerd exited with status {process.returncode}: {tail}")
        if socket.exists() and engine.run(["docker", "version"], 20, check=False).returncode == 0:
            return engine
        if time.monotonic() > deadline:
            engine.stop()
            raise EngineUnavailable(f"dockerd did not answer within {timeout:g} s ({log})")
        time.sleep(0.5)
