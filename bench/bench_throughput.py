"""Benchmark: studies per hour of one node, with one and with two worker processes.

Ten different full-size synthetic studies (203 instances each) are sent back to back by DCMTK ``storescu``
(``TCP_NODELAY=1``, one association per study) to ``ainode serve`` with its default settings and
``--concurrency 1`` then ``--concurrency 2`` (a fresh node and spool each time; results go to a receiving Storage
SCP). Throughput = studies / (last SR received - first instance sent). Target (issue 12): two workers >= 1.8x one on
two cores, or an explanation of why the cores cannot give it (the listener, the ingest of the next studies and the
delivery share the same two cores).

    python bench/bench_throughput.py [--studies 10] [--seed 41] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_end_to_end import ServedNode, load_average

from node.cli.demo import RECEIVER_AE, ReceivingAE
from tests.support.net import free_port

TARGET_SPEEDUP = 1.8
TIMEOUT_S = 1800.0


def storescu(files: list[Path], port: int) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(["storescu", "-aet", "BENCH", "-aec", "AINODE", "--required", "127.0.0.1", str(port),
                    *map(str, files)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_once(work: Path, cases: list[Path], concurrency: int) -> tuple[float, float]:
    """(seconds from first sent to last SR received, seconds to send them all)."""
    receiver = ReceivingAE(work / "pacs")
    port = free_port()
    node = ServedNode(work, port, f"{RECEIVER_AE}@127.0.0.1:{receiver.port}", ("--concurrency", str(concurrency)))
    try:
        print(f"[{concurrency} worker(s)] node ready after {node.wait_ready():.1f} s; load {load_average()}",
              flush=True)
        uids = set()
        start = time.monotonic()
        for case in cases:
            files = sorted(case.rglob("*.dcm"))
            uids.add(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
            storescu(files, port)
        sent = time.monotonic() - start
        done: set[str] = set()
        seen: set[Path] = set()
        while done != uids:
            for path in receiver.structured_reports():
                if path not in seen:
                    seen.add(path)
                    done.add(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
            if node.process.poll() is not None or time.monotonic() - start > TIMEOUT_S:
                raise RuntimeError(f"{len(done)}/{len(uids)} SRs:\n{node.tail()}")
            time.sleep(0.2)
        return time.monotonic() - start, sent
    finally:
        node.stop()
        receiver.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args(argv)
    from node.synth.generate import generate_cohort

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        print(f"{args.studies} full-size studies back to back; {os.cpu_count()} CPUs; load {load_average()}",
              flush=True)
        generate_cohort(work / "studies", args.studies, args.seed, size="full")
        cases = sorted(p for p in (work / "studies").iterdir() if p.is_dir() and p.name.startswith("case"))
        rows = []
        for concurrency in (1, 2):
            total, sent = run_once(work / f"c{concurrency}", cases, concurrency)
            rows.append((concurrency, total, sent, len(cases) * 3600.0 / total))
        print(f"\nload average after: {load_average()}")
        print("| workers | studies | sent in s | last SR after s | studies/hour | vs one worker |\n"
              "|---:|---:|---:|---:|---:|---:|")
        for concurrency, total, sent, rate in rows:
            print(f"| {concurrency} | {len(cases)} | {sent:.1f} | {total:.1f} | {rate:.0f} | "
                  f"{rate / rows[0][3]:.2f}x |")
        speedup = rows[1][3] / rows[0][3]
        print(f"two workers: {speedup:.2f}x one (target >= {TARGET_SPEEDUP:g}x)")
        return 0 if speedup >= TARGET_SPEEDUP else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
