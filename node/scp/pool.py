"""Several listener processes on one DICOM port, so parallel associations use several cores.

``ainode serve`` runs the listener in its own process (slot 0) and, with ``listener_processes`` > 1, this pool of
``python -m node.cli.listener`` processes (slots 1..n-1: :func:`node.scp.server.main` behind the parent-death
signal). They accept from the listening socket slot 0 opened (inherited), each new connection going to the least
busy of them (:mod:`node.scp.balance`). Each process has its own pynetdicom AE (so ``max_associations`` and
``max_associations_per_peer`` count per process), its own ledger connection and group-commit writer
(:mod:`node.scp.recorder`) and its own ``.incoming/p<slot>/`` folder; they share the spool and the ledger (SQLite
WAL with a busy timeout, or PostgreSQL), whose unique keys settle two processes receiving the same instance.

Supervision: a process that exits is started again after 1, 2, 4 ... s (at most 30 s) while the others go on
receiving; the new one removes its half-received files and records any file its predecessor acknowledged but had not
committed (the start-up reconciliation). Its senders saw their association end: what was not answered Success they
send again. Each process dies with the pool's thread (parent-death signal), so a SIGKILL of ``serve`` leaves none
behind. :meth:`ListenerPool.stop` sends SIGTERM (each process aborts its associations and flushes its ledger
writer), then SIGKILL after ``stop_timeout_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

from node.config import Settings
from node.scp.balance import LoadTable

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
RESTART_BACKOFF_MAX_S = 30.0
READY = "listening as "


class _Process:
    """One listener process and the thread draining its standard output (its ready line)."""

    def __init__(self, slot: int, process: subprocess.Popen[str]) -> None:
        self.slot = slot
        self.process = process
        self.ready = threading.Event()
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True,
                                        name=f"listener-{slot}-stdout")
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                if line.startswith(READY):
                    self.ready.set()


class ListenerPool:
    """Listener processes for slots 1..``count``-1 on ``port``; see the module docstring."""

    def __init__(self, settings: Settings, port: int, count: int, *, run_dir: Path, log_path: Path,
                 listen_fd: int, load: LoadTable, pass_fds: tuple[int, ...] = (), stop_timeout_s: float = 10.0) -> None:
        self.settings = replace(settings, port=port)
        self.count = count
        self.listen_fd = listen_fd
        self.load = load
        self.run_dir = run_dir
        self.log_path = log_path
        self.pass_fds = pass_fds
        self.stop_timeout_s = stop_timeout_s
        self.restarts = 0
        self._processes: dict[int, _Process] = {}
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="ainode-listener-pool", daemon=True)

    @property
    def pids(self) -> dict[int, int]:
        """slot -> pid of the process running it now."""
        return {slot: p.process.pid for slot, p in self._processes.items()}

    def start(self) -> ListenerPool:
        """Start the processes and wait until each listens; raises when one cannot start."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        return self

    def _spawn(self, slot: int, *, reconcile: bool) -> _Process:
        handover = self.settings.write_handover(self.run_dir)
        argv = [sys.executable, "-m", "node.cli.listener", "--settings-file", str(handover), "--slot", str(slot),
                "--slots", str(self.count), "--listen-fd", str(self.listen_fd), "--load-table", str(self.load.path),
                "--exit-with-parent", str(os.getpid())]
        if reconcile:
            argv.append("--reconcile")
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                       pass_fds=(*self.pass_fds, self.listen_fd),
                                       start_new_session=True)  # a Ctrl-C reaches serve, which stops them
        return _Process(slot, process)

    def _wait_ready(self, started: _Process) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not started.ready.wait(0.1):
            if started.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"listener process {started.slot} did not start (exit status "
                                   f"{started.process.poll()}); see {self.log_path}")

    def _run(self) -> None:
        try:
            for slot in range(1, self.count):
                self._processes[slot] = self._spawn(slot, reconcile=False)
            for started in self._processes.values():
                self._wait_ready(started)
        except (OSError, RuntimeError) as exc:
            self._start_error = exc
            self._started.set()
            self._shutdown()
            return
        self._started.set()
        delays = dict.fromkeys(self._processes, 1.0)
        due: dict[int, float] = {}
        while not self._stop.wait(0.5):
            for slot, running in list(self._processes.items()):
                if running.process.poll() is None:
                    continue
                now = time.monotonic()
                if slot not in due:
                    self.load.mark_gone(slot)  # the others stop leaving connections to it
                    if now - running.started_at > 60:
                        delays[slot] = 1.0
                    due[slot] = now + delays[slot]
                    logger.error("listener process %d (pid %d) exited with status %s; restarting it in %.0f s",
                                 slot, running.process.pid, running.process.returncode, delays[slot])
                    continue
                if now < due[slot]:
                    continue
                del due[slot]
                delays[slot] = min(delays[slot] * 2, RESTART_BACKOFF_MAX_S)
                try:
                    self._processes[slot] = self._spawn(slot, reconcile=True)
                    self.restarts += 1
                except OSError as exc:
                    logger.error("listener process %d cannot be started: %s; trying again", slot, exc)
        self._shutdown()

    def _shutdown(self) -> None:
        for running in self._processes.values():
            if running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)  # aborts its associations, flushes its ledger writer
        deadline = time.monotonic() + self.stop_timeout_s
        for running in self._processes.values():
            try:
                running.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.warning("listener process %d did not stop within %.0f s: killed (what it acknowledged is "
                               "recorded at the next start)", running.slot, self.stop_timeout_s)
                running.process.kill()
                running.process.wait()
            if running.process.stdout is not None:
                running.process.stdout.close()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after ``stop_timeout_s``) and wait for them."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
