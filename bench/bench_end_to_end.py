"""Benchmark: end-to-end latency of the node, from the last instance of a study sent to its SR stored at a PACS.

One node (listener + a real ``ainode worker --beat`` process, embedded broker, SQLite ledger, the shipped
models) runs with quiet period Q and a receiving AE (:class:`node.cli.demo.ReceivingAE`) as its destination. Each
run sends a different full-size synthetic study (``--size full``) with :func:`node.delivery.scu.send_files`
and times from the end of that association to the arrival of the study's SR at the receiving AE; the figure
reported is that time minus Q (the node deliberately waits Q seconds of silence before it processes a study).
The worker is warmed up (its log says ``ready``) before the first study is sent. Target (issue 4): median <= 30 s.

    python bench/bench_end_to_end.py [--runs 3] [--quiet-period 2] [--seed 21] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pydicom

from node.cli.demo import RECEIVER_AE, ReceivingAE
from node.cli.serve import RunningNode, settings_from_args, start_node
from node.delivery.scu import send_files
from node.values import Destination

TARGET_S = 30.0
TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_worker_ready(node: RunningNode, timeout_s: float = 180.0) -> float:
    """Seconds until the worker's log says Celery is ready (or the timeout: then we go on, noted)."""
    log = node.settings.spool_dir / "worker.log"
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if node.worker is not None and node.worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({node.worker.returncode}); see {log}")
        if log.exists() and b" ready." in log.read_bytes():
            return time.monotonic() - start
        time.sleep(0.2)
    return float("nan")


def wait_sr(receiver: ReceivingAE, study_uid: str, node: RunningNode) -> float:
    """Block until an SR of ``study_uid`` is stored at ``receiver``; returns time.monotonic() then."""
    deadline = time.monotonic() + TIMEOUT_S
    seen: set[Path] = set()
    while True:
        for path in receiver.structured_reports():
            if path in seen:
                continue
            seen.add(path)
            if str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) == study_uid:
                return time.monotonic()
        if node.worker is not None and node.worker.poll() is not None:
            raise RuntimeError(f"the worker exited; see {node.settings.spool_dir / 'worker.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SR for {study_uid} within {TIMEOUT_S:g} s")
        time.sleep(0.1)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def run_bench(work: Path, runs: int, quiet_period: float, seed: int) -> list[float]:
    from node.synth.generate import generate_cohort

    generate_cohort(work / "studies", runs, seed, size="full")
    cases = sorted(p for p in (work / "studies").iterdir() if p.is_dir() and p.name.startswith("case"))
    receiver = ReceivingAE(work / "pacs")
    node_port = free_port()
    environ = dict(os.environ)
    # always the embedded broker
    settings = replace(settings_from_args(argparse.Namespace(
        config=None, ae_title="AINODE", port=node_port, destination=[f"{RECEIVER_AE}@127.0.0.1:{receiver.port}"],
        spool_dir=work / "spool", database=None, quiet_period=quiet_period, broker=None, models=None), environ),
        broker_url=None)
    node = start_node(settings)
    latencies: list[float] = []
    try:
        print(f"worker ready after {wait_worker_ready(node):.1f} s; load average {load_average()}")
        print(f"{'run':>3} {'instances':>9} {'send s':>7} {'SR after last sent s':>20} {'minus Q s':>10}")
        for i, case in enumerate(cases):
            files = sorted(case.rglob("*.dcm"))
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            start = time.monotonic()
            send_files(files, Destination("AINODE", "127.0.0.1", node_port), calling_ae=RECEIVER_AE)
            sent_at = time.monotonic()
            elapsed = wait_sr(receiver, study_uid, node) - sent_at
            latencies.append(elapsed - quiet_period)
            print(f"{i:>3} {len(files):>9} {sent_at - start:>7.2f} {elapsed:>20.2f} {elapsed - quiet_period:>10.2f}",
                  flush=True)
    finally:
        node.stop()
        receiver.stop()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet-period", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--keep", type=Path, help="work folder (kept); default: a temporary folder")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        print(f"{args.runs} full-size studies, quiet period Q = {args.quiet_period:g} s, {os.cpu_count()} CPUs, "
              f"load average before: {load_average()}")
        latencies = run_bench(work, args.runs, args.quiet_period, args.seed)
        median = statistics.median(latencies)
        verdict = "meets" if median <= TARGET_S else "MISSES"
        print(f"\nmedian (SR stored - last instance sent - Q) = {median:.2f} s ({verdict} the target <= "
              f"{TARGET_S:g} s); load average after: {load_average()}")
        return 0 if median <= TARGET_S else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
