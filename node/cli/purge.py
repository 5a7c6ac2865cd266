"""``ainode purge``: retention, removing the received instances (and, with ``--results``, the results) of studies
finished long ago from the spool (:mod:`node.retention`). Run it against a running node's settings (cron, a
systemd timer, or ``docker compose exec``); it reads and writes only the ledger and the spool, never the node."""

from __future__ import annotations

import argparse
import datetime as dt

from node.cli.status import _add_common, _repository, _settings
from node.errors import ConfigError
from node.retention import purge


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "purge",
        help="remove the instances of studies finished long ago from the spool (retention)",
        description="Remove from the spool the received instances of every study that is done or failed and on "
        "which nothing has happened for --older-than-days (no instance received, no state change). The ledger "
        "keeps the study, its instances' rows and the audit trail (each study is audited study-purged); an "
        "instance sent again later is stored again. Studies receiving, ready, queued or processing are never "
        "touched. --results also removes the SR and companions of studies whose every delivery reached the PACS.",
    )
    _add_common(parser)
    parser.add_argument("--older-than-days", type=float, required=True, metavar="DAYS",
                        help="how long a finished study is kept (e.g. 30; fractions allowed)")
    parser.add_argument("--results", action="store_true",
                        help="also remove the results (SR, companions) once every delivery of the study was sent")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.set_defaults(handler=run_purge)


def run_purge(args: argparse.Namespace) -> int:
    days = args.older_than_days
    if not days >= 0:  # also NaN
        raise ConfigError(f"--older-than-days must be a number of days >= 0, not {days}")
    settings = _settings(args)
    repo = _repository(args)
    try:
        purged = purge(repo, settings.spool_dir, older_than_s=days * 86400.0, results=args.results,
                       dry_run=args.dry_run)
    finally:
        repo.ledger.dispose()
    verb = "would remove" if args.dry_run else "removed"
    for study in purged:
        idle = dt.datetime.fromtimestamp(study.idle_since, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        results = ("results " + ("too" if study.results_removed else f"kept: {study.results_kept_because}")
                   if args.results else "results kept")
        print(f"study {study.study_instance_uid}  {study.state}  idle since {idle}: {verb} {study.files} instance "
              f"file(s), {study.bytes / 1e6:.1f} MB; {results}")
    total = sum(study.bytes for study in purged)
    print(f"{len(purged)} stud{'y' if len(purged) == 1 else 'ies'}: {verb} {total / 1e6:.1f} MB")
    return 0
