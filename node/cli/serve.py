"""``ainode serve``: the node as one command — the DICOM listener plus a real job worker.

The listener runs in this process; the worker is a separate ``ainode worker --beat`` process (Celery, real
worker processes) that polls the ledger for complete studies, processes them and delivers the results. Both
read the same settings: command-line values are exported as ``AINODE_*`` variables first, so the worker sees
exactly what the listener sees (CLI > environment > ``--config`` file > defaults).

Without ``--broker`` / ``AINODE_BROKER_URL`` the worker uses the embedded filesystem broker in the spool
folder: nothing to install. With Redis, more workers on other hosts can share the load (``ainode worker``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from node.config import ENV_PREFIX, Settings
from node.errors import ConfigError
from node.log import LOG_VERBOSITY_ENV
from node.scp.server import ListenerHandle, start_listener

logger = logging.getLogger(__name__)

#: command-line option -> setting name (exported as AINODE_<NAME>)
CLI_SETTINGS: dict[str, str] = {
    "ae_title": "ae_title",
    "port": "port",
    "destination": "destinations",
    "spool_dir": "spool_dir",
    "database": "database_url",
    "quiet_period": "quiet_period_s",
}
BROKER_ENV = "AINODE_BROKER_URL"
MODELS_ENV = "AINODE_MODELS_DIR"


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


def export_settings(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Write the command-line values into ``environ`` as ``AINODE_*`` variables (CLI beats environment).

    The values are checked first as command-line options, so a bad one is reported as the option the user typed.
    """
    given: dict[str, str] = {}
    for option, setting in CLI_SETTINGS.items():
        value = getattr(args, option, None)
        if value is not None:
            given[setting] = ",".join(value) if isinstance(value, list) else str(value)
    Settings.load(args.config, env=environ, overrides=given)
    for setting, text in given.items():
        environ[ENV_PREFIX + setting.upper()] = text
    if args.config is not None:
        environ["AINODE_CONFIG"] = str(args.config)
    if args.broker:
        environ[BROKER_ENV] = args.broker
    if args.models is not None:
        environ[MODELS_ENV] = str(args.models.resolve())
    # the spool must be the same folder for both processes whatever their working directory
    spool = Settings.load(env=environ).spool_dir
    environ[ENV_PREFIX + "SPOOL_DIR"] = str(spool.resolve())


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


def start_node(environ: Mapping[str, str], *, worker: bool = True, concurrency: int = 1,
               worker_log: Path | None = None) -> RunningNode:
    """Start the listener here and ``ainode worker --beat`` as a child process, both from ``environ``."""
    settings = Settings.load(env=environ)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    listener = start_listener(settings)
    process: subprocess.Popen[bytes] | None = None
    if worker:
        argv: Sequence[str] = [sys.executable, "-m", "node.cli.worker", "--beat",
                               "--concurrency", str(concurrency)]
        if not environ.get(BROKER_ENV):
            argv = [*argv, "--recover"]  # embedded broker, one worker: re-send what a killed worker took
        log = (worker_log or settings.spool_dir / "worker.log").open("ab")
        try:
            process = subprocess.Popen(argv, env=dict(environ), stdout=log, stderr=subprocess.STDOUT)
        except OSError:
            listener.stop()
            raise
        finally:
            log.close()
    logger.info("node %s listening on port %d (worker: %s)", settings.ae_title, listener.port,
                "started" if process else "none")
    return RunningNode(settings, listener, process)


def run(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    environ = dict(os.environ)
    export_settings(args, environ)
    if getattr(args, "verbose", 0):  # ainode -v serve: the worker process logs at the same level
        environ[LOG_VERBOSITY_ENV] = str(args.verbose)
    os.environ.update(environ)  # this process's own later Settings.load() calls see the same values
    node = start_node(environ, worker=not args.no_worker, concurrency=args.concurrency)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    s = node.settings
    print(f"ainode serve: {s.ae_title} listening on {s.bind_address}:{node.listener.port}, spool {s.spool_dir}, "
          f"ledger {s.effective_database_url}, destinations {', '.join(map(str, s.destinations)) or 'none'}",
          flush=True)
    try:
        while not stop.wait(1.0):
            if node.worker is not None and node.worker.poll() is not None:
                print(f"ainode serve: the worker exited with status {node.worker.returncode}; see "
                      f"{s.spool_dir / 'worker.log'}", file=sys.stderr)
                return 1
    finally:
        node.stop()
    return 0
