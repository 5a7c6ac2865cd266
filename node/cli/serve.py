"""``ainode serve``: the node as one command — the DICOM listener plus a real job worker.

The listener runs in this process; the worker is a separate ``ainode worker --beat`` process (Celery, real
worker processes) that polls the ledger for complete studies, processes them and delivers the results. Both
run on the same settings: this process loads them once (CLI > environment > ``--config`` file > defaults) and
hands the effective values to the worker in a private settings file (``--settings-file``), so the worker sees
exactly what the listener sees.

Without ``--broker`` / ``AINODE_BROKER_URL`` the worker uses the embedded filesystem broker in the spool
folder: nothing to install. With Redis, more workers on other hosts can share the load (``ainode worker``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from node.config import Settings, redact_url
from node.errors import ConfigError
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
    "broker": "broker_url",
    "models": "models_dir",
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
                        "processed (default 60)")
    parser.add_argument("--broker", help="Celery broker URL (redis://...); default: embedded, in the spool folder")
    parser.add_argument("--models", type=Path, help="model bundles folder (default models/demo)")
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


@dataclass
class RunningNode:
    """A started node: the in-process listener and the worker process (if any)."""

    settings: Settings
    listener: ListenerHandle
    worker: subprocess.Popen[bytes] | None

    def stop(self, timeout_s: float = 30.0) -> None:
        self.listener.stop()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)  # Celery warm shutdown: finish or requeue the current task
            try:
                self.worker.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()


def worker_command(settings: Settings, handover: Path, *, concurrency: int = 1,
                   verbosity: int | None = None) -> list[str]:
    """The ``ainode worker --beat`` command line of the node's own worker, reading ``handover``."""
    argv = [sys.executable, "-m", "node.cli.worker", "--beat", "--concurrency", str(concurrency),
            "--settings-file", str(handover)]
    if not settings.broker_url:
        argv.append("--recover")  # embedded broker, one worker: re-send what a killed worker took
    if verbosity:
        argv.append("-" + "v" * verbosity)
    return argv


def start_node(settings: Settings, *, worker: bool = True, concurrency: int = 1,
               worker_log: Path | None = None, verbosity: int | None = None) -> RunningNode:
    """Start the listener here and ``ainode worker --beat`` as a child process, both on ``settings``."""
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    listener = start_listener(settings)
    process: subprocess.Popen[bytes] | None = None
    if worker:
        handover = settings.write_handover(settings.spool_dir / RUN_DIRNAME)
        log = (worker_log or settings.spool_dir / "worker.log").open("ab")
        try:
            process = subprocess.Popen(worker_command(settings, handover, concurrency=concurrency,
                                                      verbosity=verbosity), stdout=log, stderr=subprocess.STDOUT)
        except OSError:
            listener.stop()
            raise
        finally:
            log.close()
    logger.info("node %s listening on port %d (worker: %s)", settings.ae_title, listener.port,
                "started" if process else "none")
    return RunningNode(settings, listener, process)


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
                      verbosity=getattr(args, "verbose", 0) or None)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    s = node.settings
    print(startup_line(s, node.listener.port), flush=True)
    try:
        while not stop.wait(1.0):
            if node.worker is not None and node.worker.poll() is not None:
                print(f"ainode serve: the worker exited with status {node.worker.returncode}; see "
                      f"{s.spool_dir / 'worker.log'}", file=sys.stderr)
                return 1
    finally:
        node.stop()
    return 0
