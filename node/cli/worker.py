"""``ainode worker``: run a Celery worker of the node (processing, delivery, and optionally the beat scheduler).

Example: ``ainode worker --broker redis://127.0.0.1:6379/0 --concurrency 2 --database sqlite:///spool/ledger.sqlite3
--beat``. Without ``--broker`` (and without ``AINODE_BROKER_URL``) the embedded filesystem broker under
``<spool_dir>/broker`` is used, so a single machine needs no Redis. Also runnable as
``python -m node.cli.worker``. The settings are loaded once here (``--config``, ``AINODE_*``, the options below),
or taken as handed over by ``ainode serve`` (``--settings-file``), and passed to the Celery app explicitly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from node import log
from node.config import Settings
from node.errors import ConfigError, NodeError
from node.values import parse_count

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``worker`` sub-command."""
    parser = sub.add_parser(
        "worker",
        help="run a job worker (Celery): process ready studies and deliver results",
        description="Start a Celery worker consuming the node's queue. Settings come from AINODE_* variables "
        "and --config like the listener's; see docs/jobs.md.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="node settings file (YAML); default $AINODE_CONFIG")
    parser.add_argument("--settings-file", type=Path, help=argparse.SUPPRESS)  # ainode serve's handover (JSON)
    # ainode serve's pid: this worker gets SIGKILL when serve dies (Linux parent-death signal)
    parser.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help="broker URL (redis://HOST:PORT/DB); default $AINODE_BROKER_URL, "
                        "else the embedded filesystem broker in <spool_dir>/broker")
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--database", help="ledger database URL (default: $AINODE_DATABASE_URL or the SQLite "
                        "file in the spool folder)")
    parser.add_argument("--queue", help="queue name (default $AINODE_QUEUE or 'ainode')")
    parser.add_argument("--beat", action="store_true", help="also run the periodic scheduler (poll ready studies, "
                        "deliver due results); run it in exactly one process")
    parser.add_argument("--beat-only", action="store_true", help="run only the periodic scheduler (celery beat), "
                        "no processing: the one 'scheduler' process of a deployment whose workers all scale")
    parser.add_argument("--hostname", help="worker node name (default ainode@<host>)")
    parser.add_argument("--recover", action="store_true", help="embedded broker only: at start, re-send queued/"
                        "processing jobs whose message a killed worker took with it (only when this is the one "
                        "worker of this spool)")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``celery worker`` arguments for ``args``."""
    from node.jobs.celery_app import BEAT_SCHEDULER

    # JSON logs: no start-up banner (Celery prints it outside logging, as a dozen non-JSON lines)
    quiet = ["--quiet"] if log.configured_format() is log.LogFormat.JSON else []
    concurrency = str(parse_count(args.concurrency, "--concurrency"))
    argv = [*quiet, "worker", "--loglevel", "INFO", "--concurrency", concurrency,
            "--pool", "prefork", "--without-mingle", "--without-gossip"]
    if args.beat:
        argv += ["--beat", "--scheduler", BEAT_SCHEDULER]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    return argv


def beat_argv() -> list[str]:
    """The ``celery beat`` arguments: the in-memory scheduler, no state file (``celery_app.BEAT_SCHEDULER``)."""
    from node.jobs.celery_app import BEAT_SCHEDULER

    quiet = ["--quiet"] if log.configured_format() is log.LogFormat.JSON else []  # no non-JSON banner
    return [*quiet, "beat", "--loglevel", "INFO", "--scheduler", BEAT_SCHEDULER]


#: The pickle shelve of Celery's default beat scheduler, as earlier releases kept it in the spool.
LEGACY_SCHEDULE = "celerybeat-schedule"


def remove_legacy_schedule(spool_dir: Path) -> list[Path]:
    """Delete the beat shelve files an earlier release left in the spool: never read again, and a pickle."""
    removed = []
    for path in sorted(spool_dir.glob(LEGACY_SCHEDULE + "*")):
        if path.is_file():
            path.unlink()
            logger.info("removed the old beat schedule file %s (a pickle shelve; beat keeps no file now)", path.name)
            removed.append(path)
    return removed


def load_settings(args: argparse.Namespace) -> Settings:
    """The worker's settings: the handover file of ``ainode serve``, else ``--config`` / environment / options."""
    given = {"database_url": args.database, "queue": args.queue, "broker_url": args.broker}
    if args.settings_file is not None:
        if any(v is not None for v in given.values()) or args.config is not None:
            raise ConfigError("--settings-file excludes --config, --database, --queue and --broker")
        settings = Settings.read_handover(args.settings_file)
        args.settings_file.unlink(missing_ok=True)  # read once: the file may hold the database password
    else:
        settings = Settings.load(args.config, overrides=given)
    if args.recover:
        settings = replace(settings, recover_orphans=True)
    return settings


def run(args: argparse.Namespace) -> int:
    """Load the settings once, configure the Celery app with them (the forked pool inherits it), start.

    Returns Celery's exit status: ``app.worker_main`` would drop it (Celery runs its command line with click's
    ``standalone_mode=False``), so a worker that stopped on an "Unrecoverable error" (e.g. a full disk under the
    embedded broker) used to exit 0, and ``ainode serve`` took that for a clean stop.
    """
    from node.jobs.broker import quarantine_unreadable
    from node.jobs.celery_app import app, configure

    settings = load_settings(args)
    broker = configure(settings, concurrency=args.concurrency, verbosity=getattr(args, "verbose", 0) or None)
    spool_dir = settings.spool_dir
    spool_dir.mkdir(parents=True, exist_ok=True)
    if args.beat_only and args.beat:
        raise ConfigError("--beat and --beat-only exclude each other")
    remove_legacy_schedule(spool_dir)
    quarantine_unreadable(broker)  # a half-written message must not stop every start
    start: Callable[[list[str]], int | None] = app.start  # typed NoReturn, but returns the exit status
    if args.beat_only:
        logger.info("scheduler starting: broker %s, queue %s", broker.describe(), app.conf.task_default_queue)
        return start(beat_argv()) or 0  # runs until SIGTERM / SIGINT
    logger.info("worker starting: broker %s, queue %s", broker.describe(), app.conf.task_default_queue)
    return start(worker_argv(args)) or 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ainode worker")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug); default $AINODE_LOG_VERBOSITY or 1 (info)")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        from node.jobs.lifetime import exit_with_parent

        exit_with_parent(args.exit_with_parent)  # first: never outlive ainode serve (pool and beat do the same)
    try:
        args.verbose = args.verbose or log.env_verbosity(1)
        log.configure(args.verbose, default=log.LogFormat.JSON)
        return run(args)
    except NodeError as exc:
        print(f"ainode worker: error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
