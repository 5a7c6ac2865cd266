"""``ainode status``, ``ainode resend`` and ``ainode requeue``: what happened to each study, retrying failed
deliveries, and handing a stuck job to the workers again.

Both read the ledger named by the node's settings (``--config``, ``AINODE_*`` environment, ``--database``), so
they work against a running node's database without touching the node itself. No patient data is printed:
studies are shown by Study Instance UID.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from node.config import Settings
from node.errors import ConfigError, NodeError
from node.ledger import deliveries as store
from node.ledger.db import Ledger, normalise_url
from node.ledger.repository import LedgerStateError, Repository
from node.ledger.states import DeliveryState


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="node settings file (YAML); default $AINODE_CONFIG")
    parser.add_argument("--database", help="ledger URL (default: the settings' database_url or the spool's SQLite)")
    parser.add_argument("--spool-dir", type=Path, help="spool folder (locates the default SQLite ledger)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="list studies, their jobs and deliveries from the ledger",
        description="Show every study the node has received with its state, jobs and deliveries.",
    )
    _add_common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=run_status)

    resend = sub.add_parser(
        "resend",
        help="put failed (dead-letter) deliveries back in the outbox",
        description="Re-queue dead-letter deliveries: all of them, or those of one delivery, job or destination. "
        "The running node sends them on its next outbox pass.",
    )
    _add_common(resend)
    resend.add_argument("--delivery", type=int, help="one delivery id")
    resend.add_argument("--job", type=int, help="every failed delivery of one job")
    resend.add_argument("--destination", help="every failed delivery to one destination (AET@HOST:PORT)")
    resend.set_defaults(handler=run_resend)

    requeue = sub.add_parser(
        "requeue",
        help="hand a stuck job (queued / processing with no live worker) to the workers again",
        description="Re-queue a job that stays queued (its message never reached the broker) or processing (its "
        "worker was killed, e.g. by the hard time limit): the ledger job goes back to queued (audited "
        "job-requeued) and ainode.process_study is sent to the broker of the settings. A job counts as stuck when "
        "unchanged for 300 s (queued) or for the hard task time limit (processing); --force skips that check. A "
        "duplicate run is harmless: only the run that finishes the job records a result.",
    )
    _add_common(requeue)
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", type=int, action="append", help="the job id (repeatable)")
    which.add_argument("--stuck", action="store_true", help="every job that counts as stuck now")
    requeue.add_argument("--force", action="store_true", help="re-queue even if a worker may still hold it")
    requeue.add_argument("--broker", help="broker URL (default: the settings' broker_url or the embedded broker)")
    requeue.set_defaults(handler=run_requeue)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(args.config, overrides={"database_url": args.database, "spool_dir": args.spool_dir})


def _repository(args: argparse.Namespace, *, create: bool = False) -> Repository:
    """The ledger the settings name; a missing SQLite file is an error unless ``create`` (it is made then)."""
    settings = _settings(args)
    url = make_url(normalise_url(settings.effective_database_url))
    if not create and url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise ConfigError(
            f"no ledger at {url.database}: pass the node's --spool-dir or --database (or AINODE_SPOOL_DIR / "
            "AINODE_DATABASE_URL)"
        )
    # render_as_string keeps the password: str(url) writes "***" and the login fails on a protected PostgreSQL
    return Repository(Ledger.open(url.render_as_string(hide_password=False)))


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def collect(repo: Repository) -> list[dict[str, Any]]:
    """Studies with their jobs and deliveries, newest first, as plain data."""
    out: list[dict[str, Any]] = []
    all_deliveries = store.deliveries(repo)
    purged = repo.latest_event_times("study-purged")  # retention (node.retention): instance files removed
    for study in sorted(repo.studies(), key=lambda s: -s.last_received_at):
        jobs = repo.jobs(study.study_instance_uid)
        job_ids = {job.id for job in jobs}
        purged_at = purged.get(study.study_instance_uid)
        out.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "state": str(study.state),
                "version": study.version,
                "instances": study.instance_count,
                "series": len(study.series),
                "last_received": _when(study.last_received_at),
                # only while nothing arrived since: a study sent again after its purge holds files again
                "purged": _when(purged_at) if purged_at is not None and purged_at >= study.last_received_at else None,
                "reason": study.reason,
                "jobs": [{"id": j.id, "state": str(j.state), "version": j.study_version, "reason": j.reason}
                         for j in jobs],
                "deliveries": [_delivery(d) for d in all_deliveries if d.job_id in job_ids],
            }
        )
    return out


def _delivery(d: store.OutboxItem) -> dict[str, Any]:
    """One delivery as plain data: the next retry time and last error of a pending one, the commitment state."""
    return {
        "id": d.id, "job": d.job_id, "destination": d.destination, "state": str(d.state), "attempts": d.attempts,
        "last_status": d.last_status, "last_error": d.last_error,
        "next_attempt": _when(d.next_attempt_at) if d.state is DeliveryState.PENDING and d.next_attempt_at else None,
        "storage_commitment": _commitment(d),
    }


def _commitment(d: store.OutboxItem) -> str | None:
    if d.state is DeliveryState.COMMITTED and d.committed_at is not None:
        return f"committed {_when(d.committed_at)}"
    if d.awaiting_commitment and d.commit_requested_at is not None:
        return f"awaiting since {_when(d.commit_requested_at)}"
    return "not committed" if d.state is DeliveryState.COMMIT_FAILED else None


def _delivery_line(d: dict[str, Any]) -> str:
    status = "" if d["last_status"] is None else f"  last status 0x{d['last_status']:04X}"
    line = f"    delivery {d['id']} -> {d['destination']}  {d['state']}  attempts {d['attempts']}{status}"
    if d["next_attempt"]:
        line += f"  next retry {d['next_attempt']}"
    if d["storage_commitment"]:
        line += f"  storage commitment: {d['storage_commitment']}"
    if d["last_error"] and d["state"] not in ("sent", "committed"):
        line += f"\n        last error: {d['last_error']}"
    return line


def run_status(args: argparse.Namespace) -> int:
    repo = _repository(args)
    try:
        studies = collect(repo)
    finally:
        repo.ledger.dispose()
    if args.json:
        json.dump(studies, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not studies:
        print("no studies received yet")
        return 0
    for s in studies:
        print(f"study {s['study_instance_uid']}  {s['state']}  v{s['version']}  "
              f"{s['instances']} instance(s) in {s['series']} series  last received {s['last_received']}"
              + (f"  instance files removed by retention {s['purged']}" if s["purged"] else ""))
        if s["reason"]:
            print(f"    reason: {s['reason']}")
        for j in s["jobs"]:
            print(f"    job {j['id']}  {j['state']}" + (f"  ({j['reason']})" if j["reason"] else ""))
        for d in s["deliveries"]:
            print(_delivery_line(d))
    return 0


def run_resend(args: argparse.Namespace) -> int:
    repo = _repository(args)
    try:
        count = store.resend(repo, time.time(), delivery_id=args.delivery, job_id=args.job,
                             destination=args.destination)
    finally:
        repo.ledger.dispose()
    print(f"{count} failed deliver{'y' if count == 1 else 'ies'} re-queued (failed and commit-failed)")
    return 0


def run_requeue(args: argparse.Namespace) -> int:
    from node.jobs.broker import resolve_broker
    from node.web.actions import requeue_and_dispatch, stuck_after
    from node.web.dispatch import CeleryDispatcher

    settings = _settings(args)
    repo = _repository(args)
    dispatcher = CeleryDispatcher(resolve_broker(settings, args.broker), settings)
    try:
        who = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (a container without an /etc/passwd entry)
        who = "cli"
    failures = 0
    try:
        now = time.time()
        if args.stuck:
            queued_after, processing_after = stuck_after(settings)
            ids = [j.id for j in repo.stuck_jobs(now, queued_after_s=queued_after, processing_after_s=processing_after)]
        else:
            ids = list(args.job)
        for job_id in ids:
            try:
                job = requeue_and_dispatch(repo, dispatcher, settings.spool_dir, job_id, who, now, settings=settings,
                                           force=args.force)
            except LedgerStateError as exc:
                print(f"job {job_id}: not re-queued: {exc.message}", file=sys.stderr)
                failures += 1
                continue
            except (OSError, NodeError) as exc:
                print(f"job {job_id}: re-queued in the ledger but the broker cannot be reached: {exc}; run this "
                      "again with --force once it is back", file=sys.stderr)
                failures += 1
                continue
            print(f"job {job.id} ({job.study_instance_uid}) re-queued and sent to the workers")
        if args.stuck and not ids:
            print("no stuck job")
    finally:
        dispatcher.close()
        repo.ledger.dispose()
    return 1 if failures else 0

