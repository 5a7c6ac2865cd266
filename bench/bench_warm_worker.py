"""Benchmark: a cold worker (the old configuration: no preload, a fresh pool process per task) against a warm one
(the defaults: preload before the fork, pool processes that serve many jobs), on the same full-size studies.

For each mode: the studies are received by a real listener into a fresh spool and ledger and dispatched; a real
``ainode worker`` (embedded broker) is started and timed until it logs ``ready``; then the jobs are sent one at a
time, each after the previous one finished. Per job: the wall time from sending its task to ``done`` in the ledger,
the job's own processing time (``total`` in its result JSON; of it ``models``, loading the model set), the overhead
(wall - processing: broker pickup, process start, ledger writes) and the pool processes' peak RSS. A cold process
also imports ANTs / PyRadiomics and reads the template and atlas inside the job's processing time (in its first
registration and features), so compare the wall times, not only the overhead. Prints a table.

    python bench/bench_warm_worker.py [--studies 3] [--seed 11] [--size full] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celery import Celery

from node.config import ForceCompleteAction, Settings
from node.delivery.scu import send_files
from node.imaging.series_rules import load_rules
from node.jobs.broker import resolve_broker
from node.jobs.celery_app import production_settings
from node.jobs.completeness import CompletenessChecker, CompletenessPolicy
from node.jobs.runner import dispatch_ready
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import JobState
from node.scp.server import start_listener
from node.spool import result_json_path
from node.values import Destination
from node.vocabulary import PROCESS_TASK

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    # the release before warm workers: no preload, one task per pool process
    "cold": {"AINODE_WORKER_PRELOAD": "0", "AINODE_WORKER_MAX_TASKS_PER_CHILD": "1"},
    "warm": {},  # the defaults
}


def _receive(spool: Path, url: str, cases: list[Path]) -> tuple[Repository, list[tuple[int, str, str, str]]]:
    """Receive every study with a real listener, then dispatch them: the task arguments, one per job."""
    settings = Settings.load(env={}, overrides={"port": 0, "bind_address": "127.0.0.1", "spool_dir": spool,
                                                 "min_free_disk_bytes": 0, "database_url": url,
                                                 "quiet_period_s": 0})
    listener = start_listener(settings)
    try:
        for case in cases:
            send_files(sorted(case.rglob("*.dcm")), Destination("AINODE", "127.0.0.1", listener.port),
                       calling_ae="BENCH")
    finally:
        listener.stop()
    repo = Repository(Ledger.open(url))
    checker = CompletenessChecker(repo, load_rules(), CompletenessPolicy(0.0, 600.0, ForceCompleteAction.FAIL),
                                  spool)
    sent: list[tuple[int, str, str, str]] = []
    dispatch_ready(repo, checker, time.time(), lambda *a: sent.append(a), spool)
    if len(sent) != len(cases):
        raise SystemExit(f"only {len(sent)} of {len(cases)} studies were dispatched")
    return repo, sent


def _pool_peak_rss_mb(worker_pid: int) -> float:
    """The largest peak resident size (VmHWM) among the worker's pool processes now, MiB (Linux)."""
    peaks = [0.0]
    for task in Path(f"/proc/{worker_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def _state(repo: Repository, job_id: int, uid: str) -> JobState:
    return next(job.state for job in repo.jobs(uid) if job.id == job_id)


def run_mode(mode: str, work: Path, cases: list[Path], timeout_s: float) -> dict[str, object]:
    spool = work / mode / "spool"
    url = f"sqlite:///{work / mode / 'ledger.sqlite3'}"
    spool.mkdir(parents=True)
    repo, sent = _receive(spool, url, cases)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    env.update({"AINODE_SPOOL_DIR": str(spool), "AINODE_DATABASE_URL": url, "AINODE_QUEUE": queue,
                "PYTHONUNBUFFERED": "1", **MODES[mode]})
    log_path = work / mode / "worker.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "node.cli.worker", "--hostname", f"{mode}@bench"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while " ready." not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() - started > timeout_s:
                raise SystemExit(f"the {mode} worker did not get ready: see {log_path}")
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        settings = Settings.load(env={"AINODE_SPOOL_DIR": str(spool), "AINODE_QUEUE": queue})
        client = Celery(f"bench-{mode}")
        client.conf.update(production_settings(resolve_broker(settings), settings))
        jobs = []
        for job_id, uid, study_dir, out_dir in sent:
            at = time.monotonic()
            client.send_task(PROCESS_TASK, args=[job_id, uid, study_dir, out_dir])
            while _state(repo, job_id, uid) not in (JobState.DONE, JobState.FAILED):
                if worker.poll() is not None or time.monotonic() - at > timeout_s:
                    raise SystemExit(f"job {job_id} did not finish in the {mode} worker: see {log_path}")
                time.sleep(0.05)
            wall = time.monotonic() - at
            if _state(repo, job_id, uid) is JobState.FAILED:
                raise SystemExit(f"job {job_id} failed in the {mode} worker: see {log_path}")
            timings = json.loads(result_json_path(Path(out_dir)).read_text())["timings_s"]
            jobs.append({"wall": wall, "processing": float(timings["total"]), "models": float(timings["models"]),
                         "overhead": wall - timings["total"], "pool_rss_mb": _pool_peak_rss_mb(worker.pid)})
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        repo.ledger.dispose()
    return {"ready_s": ready_s, "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=3, help="studies per mode, run one after the other")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per job (and for the start)")
    parser.add_argument("--keep", type=Path, help="keep the studies, spools and worker logs here")
    args = parser.parse_args(argv)
    from node.synth.generate import generate_cohort

    work = args.keep or Path(tempfile.mkdtemp(prefix="ainode-bench-warm-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        generate_cohort(work / "studies", args.studies, args.seed, size=args.size)
        cases = sorted(p for p in (work / "studies").iterdir() if p.is_dir() and p.name.startswith("case"))
        results = {mode: run_mode(mode, work, cases, args.timeout) for mode in MODES}
        print(f"\ncold vs warm worker, {len(cases)} {args.size}-size studies one after the other, {os.cpu_count()} "
              f"cores, load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'mode':<5} {'ready s':>8} {'job':>4} {'wall s':>7} {'processing s':>13} {'of it models s':>15} "
              f"{'overhead s':>11} {'pool peak RSS MiB':>18}")
        for mode, result in results.items():
            jobs = result["jobs"]
            assert isinstance(jobs, list)
            for number, job in enumerate(jobs, start=1):
                ready = f"{result['ready_s']:.1f}" if number == 1 else ""
                print(f"{mode:<5} {ready:>8} {number:>4} {job['wall']:>7.1f} {job['processing']:>13.1f} "
                      f"{job['models']:>15.2f} {job['overhead']:>11.1f} {job['pool_rss_mb']:>18.0f}")
            later = [job["overhead"] for job in jobs[1:]] or [jobs[0]["overhead"]]
            print(f"{mode:<5} {'':>8} {'med':>4} {statistics.median(j['wall'] for j in jobs):>7.1f} "
                  f"{statistics.median(j['processing'] for j in jobs):>13.1f} "
                  f"{statistics.median(j['models'] for j in jobs):>15.2f} {statistics.median(later):>11.1f}"
                  "   (overhead: median of jobs 2..n)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
