"""Benchmark: a real PACS sends a full-size study to ``ainode serve``; time from the last instance sent to the SR
stored back in that PACS.

Orthanc (Debian's ``orthanc``, started by this script on free loopback ports, ``TCP_NODELAY=1``) holds N
different full-size synthetic studies (203 instances each), uploaded over its REST API before any timing. The
node is ``ainode serve`` **with its default settings** (a subprocess: listener + ``ainode worker --beat``,
embedded broker, SQLite ledger, the shipped demonstration models), whose only arguments are its port, spool and
destination (Orthanc). For each study, ``POST /modalities/AINODE/store`` makes Orthanc send it (C-STORE, Orthanc's
own association); that call returns once Orthanc has sent the last instance and closed the association. The time
reported is from that moment to the first SR of the study listed by Orthanc's REST API (polled every 0.1 s).

The same run is repeated with the node's old behaviour as the baseline: completeness by a 60 s quiet period only
(``--quiet-period 60`` and ``AINODE_GEOMETRIC_COMPLETENESS=false``), the peers' way. Target (issue 12): median <= 10 s.

    python bench/bench_end_to_end.py [--runs 5] [--baseline-runs 2] [--seed 21] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.integration.orthanc

from tests.integration.orthanc import ORTHANC_AE, Orthanc, start_orthanc
from tests.support.net import free_port

TARGET_S = 10.0
TIMEOUT_S = 300.0
NODE_AE = "AINODE"
#: what makes the node behave as before issue 12: a study is complete after 60 s without new instances
BASELINE_ARGS = ("--quiet-period", "60")
BASELINE_ENV = {"AINODE_GEOMETRIC_COMPLETENESS": "false"}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class ServedNode:
    """``ainode serve`` as a subprocess (its own process group), with default settings."""

    def __init__(self, work: Path, port: int, destination: str, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.spool = work / "spool"
        self.port = port
        env = {**os.environ, "AINODE_ALLOW_DEMO_MODELS": "1", **(extra_env or {})}
        for name in ("AINODE_BROKER_URL", "AINODE_DATABASE_URL", "AINODE_CONFIG"):  # the embedded defaults
            env.pop(name, None)
        command = [sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--spool-dir", str(self.spool),
                   "--destination", destination, *extra_args]
        self.log = work / "serve.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def wait_ready(self, timeout_s: float = 240.0) -> float:
        """Seconds until the listener prints its start line and the worker's log says ``ready``."""
        start = time.monotonic()
        worker_log = self.spool / "worker.log"
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"ainode serve exited ({self.process.returncode}):\n{self.tail()}")
            listening = self.log.exists() and b"listening on" in self.log.read_bytes()
            if listening and worker_log.exists() and b" ready." in worker_log.read_bytes():
                return time.monotonic() - start
            time.sleep(0.2)
        raise TimeoutError(f"ainode serve not ready within {timeout_s:g} s:\n{self.tail()}")

    def tail(self) -> str:
        parts = [p.read_text(errors="replace")[-3000:] for p in (self.log, self.spool / "worker.log") if p.exists()]
        return "\n---\n".join(parts)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def sr_stored(orthanc: Orthanc, study_id: str) -> bool:
    for series in orthanc.get_json(f"/studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") == "SR":
            return True
    return False


def run_series(work: Path, orthanc: Orthanc, study_ids: list[str], label: str,
               extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> list[float]:
    """Start a node, send each study once from Orthanc, return the latencies (last sent -> SR in Orthanc)."""
    port = free_port()
    orthanc.request("PUT", f"/modalities/{NODE_AE}",
                    f'{{"AET": "{NODE_AE}", "Host": "127.0.0.1", "Port": {port}}}'.encode())
    node = ServedNode(work, port, f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}", extra_args, extra_env)
    latencies: list[float] = []
    try:
        print(f"[{label}] node ready after {node.wait_ready():.1f} s; load average {load_average()}", flush=True)
        print(f"{'run':>3} {'send s':>7} {'SR after last sent s':>21}", flush=True)
        for i, study_id in enumerate(study_ids):
            start = time.monotonic()
            answer = orthanc.post_json(f"/modalities/{NODE_AE}/store", study_id, timeout=TIMEOUT_S)
            sent = time.monotonic()
            if int(answer.get("FailedInstancesCount", 0)):
                raise RuntimeError(f"Orthanc could not send every instance: {answer}")
            while not sr_stored(orthanc, study_id):
                if node.process.poll() is not None or time.monotonic() - sent > TIMEOUT_S:
                    raise RuntimeError(f"no SR for study {i} within {TIMEOUT_S:g} s:\n{node.tail()}")
                time.sleep(0.1)
            latency = time.monotonic() - sent
            latencies.append(latency)
            print(f"{i:>3} {sent - start:>7.2f} {latency:>21.2f}", flush=True)
    finally:
        node.stop()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="studies sent to the node with its defaults")
    parser.add_argument("--baseline-runs", type=int, default=2, help="studies sent with the old 60 s quiet period "
                        "(0: skip the baseline)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--keep", type=Path, help="work folder (kept); default: a temporary folder")
    args = parser.parse_args(argv)
    from node.synth.generate import generate_cohort

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    orthanc = None
    try:
        total = args.runs + args.baseline_runs
        print(f"{total} full-size studies; {os.cpu_count()} CPUs; load average before: {load_average()}", flush=True)
        generate_cohort(work / "studies", total, args.seed, size="full")
        cases = sorted(p for p in (work / "studies").iterdir() if p.is_dir() and p.name.startswith("case"))
        orthanc = start_orthanc(work / "orthanc", {NODE_AE: (NODE_AE, "127.0.0.1", 104)})
        study_ids = []
        for case in cases:
            files = sorted(case.rglob("*.dcm"))
            ids = {orthanc.upload(path)["ParentStudy"] for path in files}
            assert len(ids) == 1, ids
            study_ids.append(ids.pop())
        n_instances = len(list(cases[0].rglob("*.dcm")))
        print(f"uploaded to Orthanc ({len(cases)} studies of {n_instances} instances)", flush=True)
        results = {"defaults": run_series(work / "defaults", orthanc, study_ids[:args.runs], "defaults")}
        if args.baseline_runs:
            results["60 s quiet period (old)"] = run_series(
                work / "baseline", orthanc, study_ids[args.runs:], "baseline", BASELINE_ARGS, BASELINE_ENV)
        print(f"\nlast instance sent -> SR stored in Orthanc; load average after: {load_average()}")
        print("| node settings | runs | median s | min s | max s | target |\n|---|---:|---:|---:|---:|---|")
        for label, values in results.items():
            target = f"<= {TARGET_S:g} s" if label == "defaults" else "(baseline)"
            print(f"| {label} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | "
                  f"{max(values):.2f} | {target} |")
        return 0 if statistics.median(results["defaults"]) <= TARGET_S else 1
    finally:
        if orthanc is not None:
            orthanc.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
