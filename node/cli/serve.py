"""``ainode serve``: the node as one command — the DICOM listener plus a real job worker.

The listener runs in this process; the worker is a separate ``ainode worker --beat`` process (Celery, real
worker processes) that processes studies and delivers the results. The listener sends a study's job as soon as
the study is complete (judged ``settle_s`` after each association ends, :mod:`node.jobs.dispatcher`), also with
``--no-worker``; the worker's periodic poll for complete studies remains as a safety net. Both
run on the same settings: this process loads them once (CLI > environment > ``--config`` file > defaults) and
hands the effective values to the worker in a private settings file (``--settings-file``), so the worker sees
exactly what the listener sees.

Without ``--broker`` / ``AINODE_BROKER_URL`` the worker uses the embedded filesystem broker in the spool
folder: nothing to install. With Redis, more workers on other hosts can share the load (``ainode worker``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import NoReturn

from node.cli.demo_models import check_demo_models
from node.config import Settings, redact_url
from node.errors import ConfigError
from node.heap import freeze_startup_heap
from node.jobs.dispatcher import dispatcher_factory
from node.jobs.sender import process_sender
from node.scp.balance import SharedPort
from node.scp.pool import ListenerPool
from node.scp.server import ListenerHandle, start_listener

logger = logging.getLogger(__name__)

#: command-line option -> setting name
CLI_SETTINGS: dict[str, str] = {
    "ae_title": "ae_title",
    "port": "port",
    "destination": "destinations",
    "spool_dir": "spool_dir",
    "database": "database_url",
    "quiet_period": "quiet_period_s",
    "settle": "settle_s",
    "broker": "broker_url",
    "models": "models_dir",
    "allow_demo_models": "allow_demo_models",
}
#: where the settings handed to a child process are written (inside the spool, private files)
RUN_DIRNAME = ".run"


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="settings file (YAML); default $AINODE_CONFIG")
    parser.add_argument("--ae-title", help="this node's AE title (default AINODE)")
    parser.add_argument("--port", type=int, help="DICOM port to listen on (default 11112)")
    parser.add_argument("--destination", action="append", metavar="AET@HOST:PORT",
                        help="where results are sent (repeatable; default: none, results stay in the spool)")
    parser.add_argument("--spool-dir", type=Path, help="spool folder (default ./spool)")
    parser.add_argument("--database", help="ledger URL (default: SQLite in the spool folder)")
    parser.add_argument("--quiet-period", type=float, help="seconds without new instances before a study is "
                        "processed when its headers cannot tell whether it is whole (default 60)")
    parser.add_argument("--settle", type=float, help="seconds after its last instance before a geometrically "
                        "whole study with no association open is processed (0 to 2, default 1)")
    parser.add_argument("--broker", help="Celery broker URL (redis://...); default: embedded, in the spool folder")
    parser.add_argument("--models", type=Path, help="model bundles folder (default models/demo)")
    parser.add_argument("--allow-demo-models", action="store_const", const="true", default=None,
                        help="run even with demonstration models trained on synthetic data (refused otherwise; "
                             "AINODE_ALLOW_DEMO_MODELS)")
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the node: DICOM listener + job worker (embedded broker by default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_node_arguments(parser)
    parser.add_argument("--no-worker", action="store_true", help="listener only (workers run elsewhere)")
    parser.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The node's settings: command-line values over the environment and ``--config`` (loaded once, here).

    The values are checked as command-line options, so a bad one is reported as the option the user typed. The
    spool (and a models folder) become absolute: the worker may run in another working directory.
    """
    given: dict[str, object] = {}
    for option, setting in CLI_SETTINGS.items():
        value = getattr(args, option, None)
        if value is not None:
            given[setting] = ",".join(value) if isinstance(value, list) else str(value)
    settings = Settings.load(getattr(args, "config", None), env=env, overrides=given)
    models = settings.models_dir.resolve() if settings.models_dir is not None else None
    return replace(settings, spool_dir=settings.spool_dir.resolve(), models_dir=models)


#: the lock file a running node holds on its spool (``flock``), inside RUN_DIRNAME
LOCK_NAME = "node.lock"
#: the listener processes' connection counts (node.scp.balance), inside RUN_DIRNAME
LOAD_TABLE_NAME = "listener-load"
#: the worker is restarted after 1, 2, 4 ... s, at most this long after it stopped
RESTART_BACKOFF_MAX_S = 30.0
#: a worker that ran this long before it stopped is restarted after the first delay again
RESTART_BACKOFF_RESET_S = 60.0


class SpoolLock:
    """An exclusive ``flock`` on ``<spool>/.run/node.lock``, held while a node runs on that spool.

    A second ``ainode serve`` on the same spool refuses to start with a clear error: two listeners and two
    workers on one spool would race for the same studies and the embedded broker's messages. The lock's file
    descriptor is inherited by the node's worker (the lock is held until the last holder exits), so a worker that
    outlived its ``serve`` (where the parent-death signal is not available) still keeps a new node out.
    """

    def __init__(self, spool_dir: Path) -> None:
        folder = spool_dir / RUN_DIRNAME
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self.fd)
            raise ConfigError(
                f"another node (ainode serve pid {holder}, or a worker it started) is running on the spool "
                f"{spool_dir} (lock {self.path}); two nodes on one spool would process studies twice. Stop it "
                "first, or give this node another --spool-dir"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for the message above only (a full disk must not stop us)
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the flock goes with the last descriptor (the worker's copy is closed by now)
            self.fd = -1


class WorkerSupervisor:
    """Runs the node's worker process, restarts it when it stops, and stops it (and all its children) on demand.

    The worker runs in a session (process group) of its own, so a terminal's Ctrl-C or a SIGTERM to this node's
    process group reaches only ``serve``, which stops the worker itself: SIGTERM to the worker's main process
    (Celery's warm shutdown stops its pool and beat), then SIGKILL to the group after ``stop_timeout_s``. When the
    worker exits on its own, its group is killed (nothing it started survives it) and it is started again after
    1, 2, 4 ... s (at most :data:`RESTART_BACKOFF_MAX_S`); the listener keeps running meanwhile. The worker arms
    a parent-death signal (``--exit-with-parent``), so a SIGKILL of ``serve`` takes it down too; its pool
    processes and beat do the same against it. All starts happen in this object's thread, which lives until
    the worker has been reaped (the parent-death signal fires when the *thread* that started a process ends).
    """

    def __init__(self, settings: Settings, log_path: Path, *, concurrency: int = 1, verbosity: int | None = None,
                 pass_fds: tuple[int, ...] = (), stop_timeout_s: float | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.concurrency = concurrency
        self.verbosity = verbosity
        self.pass_fds = pass_fds
        self.stop_timeout_s = settings.worker_stop_timeout_s if stop_timeout_s is None else stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._handover: Path | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="ainode-worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        """Start the supervising thread and the worker; raises the ``OSError`` of a worker that cannot start."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self._handover is not None:
            self._handover.unlink(missing_ok=True)  # a worker that died before reading it leaves it behind
        self._handover = self.settings.write_handover(self.settings.spool_dir / RUN_DIRNAME)
        command = worker_command(self.settings, self._handover, concurrency=self.concurrency,
                                 verbosity=self.verbosity)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=self.pass_fds)

    def _run(self) -> None:
        try:
            self.process = self._spawn()
        except OSError as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        delay = 1.0
        started_at = time.monotonic()
        while not self._stop.is_set():
            process = self.process
            if process.poll() is None:
                self._stop.wait(0.5)
                continue
            ran_s = time.monotonic() - started_at
            self._kill_group(process.pid)  # whatever the worker started dies with it
            if ran_s >= RESTART_BACKOFF_RESET_S:
                delay = 1.0
            logger.error("the worker (pid %d) exited with status %s after %.0f s; restarting it in %.0f s (see %s)",
                         process.pid, process.returncode, ran_s, delay, self.log_path)
            if self._stop.wait(delay):
                break
            try:
                self.process = self._spawn()
            except OSError as exc:
                logger.error("the worker cannot be started: %s; trying again", exc)
                delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
                continue
            self.restarts += 1
            started_at = time.monotonic()
            delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
        self._shutdown()

    @staticmethod
    def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _shutdown(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM to the main process alone: Celery's warm shutdown stops its pool and beat itself (a SIGTERM
            # to the whole group killed the idle pool processes under it, the pool started new ones during the
            # shutdown, and the stop ran into the timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("the worker did not stop within %.0f s: killed (its job is sent again at the next "
                               "start)", self.stop_timeout_s)
        self._kill_group(process.pid)  # SIGKILL: the main process if still there, and anything left in its group
        process.wait()
        if self._handover is not None:
            self._handover.unlink(missing_ok=True)

    def request_stop(self) -> None:
        """Begin stopping the worker (returns at once); :meth:`wait` until it is gone."""
        self._stop.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether the worker has been stopped and reaped within ``timeout_s``."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self) -> None:
        self.request_stop()
        self.wait()


@dataclass
class RunningNode:
    """A started node: the in-process listener, the supervised worker process (if any) and the spool lock."""

    settings: Settings
    listener: ListenerHandle
    supervisor: WorkerSupervisor | None
    lock: SpoolLock | None = None
    pool: ListenerPool | None = None  # the other listener processes on the same port (listener_processes > 1)

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        """The worker process running now (a new one after each restart)."""
        return None if self.supervisor is None else self.supervisor.process

    def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after ``worker_stop_timeout_s``) and the listener; release the
        spool lock. The listener stops while the worker does."""
        if self.supervisor is not None:
            self.supervisor.request_stop()
        try:
            if self.pool is not None:
                self.pool.stop()
            self.listener.stop()
            _abort_associations(self.listener)
        finally:
            if self.supervisor is not None:
                self.supervisor.wait()
            if self.lock is not None:
                self.lock.release()


def _abort_associations(listener: ListenerHandle) -> None:
    """End the associations still open (an idle peer keeps its association thread, which is not a daemon, alive
    until a network timeout, and the process would wait for it at exit)."""
    for assoc in list(getattr(listener.ae, "active_associations", [])):
        with contextlib.suppress(Exception):
            assoc.abort()


def worker_command(settings: Settings, handover: Path, *, concurrency: int = 1,
                   verbosity: int | None = None) -> list[str]:
    """The ``ainode worker --beat`` command line of the node's own worker, reading ``handover``; it dies with
    this process (``--exit-with-parent``)."""
    argv = [sys.executable, "-m", "node.cli.worker", "--beat", "--concurrency", str(concurrency),
            "--settings-file", str(handover), "--exit-with-parent", str(os.getpid())]
    if not settings.broker_url:
        argv.append("--recover")  # embedded broker, one worker: re-send what a killed worker took
    if verbosity:
        argv.append("-" + "v" * verbosity)
    return argv


def start_node(settings: Settings, *, worker: bool = True, concurrency: int = 1,
               worker_log: Path | None = None, verbosity: int | None = None, freeze_heap: bool = False) -> RunningNode:
    """Lock the spool, start the listener here and ``ainode worker --beat`` as a supervised child process.

    Refuses demonstration models (manifest ``training_data: synthetic``) unless ``allow_demo_models``. With
    ``freeze_heap`` (``ainode serve``: this process lives as long as the node) the process's start-up heap is frozen
    once the dispatcher has loaded the job layer (node/heap.py); a test leaves it off (a frozen heap keeps its
    garbage)."""
    check_demo_models(settings)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    lock = SpoolLock(settings.spool_dir)
    processes = settings.effective_listener_processes
    # with a pool, this process's listener opens the port (slot 0) and the pool's processes take its socket
    shared = SharedPort(settings.spool_dir / RUN_DIRNAME / LOAD_TABLE_NAME, 0, processes) if processes > 1 else None
    try:  # the listener dispatches a study as soon as it is complete; the worker's poll is the safety net
        on_loaded = (lambda: freeze_startup_heap("ainode serve")) if freeze_heap else None
        listener = start_listener(settings, dispatcher=dispatcher_factory(settings, process_sender(settings),
                                                                          on_loaded=on_loaded), shared=shared)
    except BaseException:
        lock.release()
        raise
    pool: ListenerPool | None = None
    if processes > 1:
        assert listener.server.load is not None
        pool = ListenerPool(settings, listener.port, processes, run_dir=settings.spool_dir / RUN_DIRNAME,
                            log_path=settings.spool_dir / "listener.log", listen_fd=listener.server.fileno(),
                            load=listener.server.load, pass_fds=(lock.fd,))
        try:
            pool.start()
        except BaseException:
            listener.stop()
            lock.release()
            raise
    supervisor: WorkerSupervisor | None = None
    if worker:
        supervisor = WorkerSupervisor(settings, worker_log or settings.spool_dir / "worker.log",
                                      concurrency=concurrency, verbosity=verbosity, pass_fds=(lock.fd,))
        try:
            supervisor.start()
        except OSError:
            if pool is not None:
                pool.stop()
            listener.stop()
            lock.release()
            raise
    logger.info("node %s listening on port %d in %d process(es) (worker: %s)", settings.ae_title, listener.port,
                processes, "started" if supervisor else "none")
    return RunningNode(settings, listener, supervisor, lock, pool)


def startup_line(s: Settings, port: int) -> str:
    """What ``ainode serve`` prints once it listens (no password: the database URL is redacted)."""
    return (f"ainode serve: {s.ae_title} listening on {s.bind_address}:{port}, spool {s.spool_dir}, "
            f"ledger {redact_url(s.effective_database_url)}, "
            f"destinations {', '.join(map(str, s.destinations)) or 'none'}")


def run(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    settings = settings_from_args(args)
    # ainode -v serve: the worker process logs at the same level
    node = start_node(settings, worker=not args.no_worker, concurrency=args.concurrency,
                      verbosity=getattr(args, "verbose", 0) or None, freeze_heap=True)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(startup_line(node.settings, node.listener.port), flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        started = time.monotonic()
        node.stop()
        logger.info("node stopped in %.1f s", time.monotonic() - started)
    _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """End the process as soon as the node has stopped (worker reaped, listener closed, ledger released).

    The interpreter's own teardown is skipped: it joins non-daemon threads (a peer's half-open association keeps
    one until a network timeout) and finalises the imaging stack's modules, seconds on a loaded host, while a
    container stop allows 10 s in all.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
