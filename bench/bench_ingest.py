"""Benchmark: C-STORE ingest rate of the node's listener vs DCMTK ``storescp`` on the same study.

Both receivers get the same full-size synthetic study (``ainode synth --size full``, ~200 instances) from the
same sender, DCMTK ``storescu`` (one association, ``TCP_NODELAY=1``). The node runs with its real durability:
every instance written under ``.incoming/``, fsynced, renamed, its directory fsynced, and recorded in the SQLite
ledger in a committed transaction; ``storescp`` (``TCP_NODELAY=1``) just writes files to a tmp folder. Each run
starts a fresh receiver with an empty folder; the time measured is the ``storescu`` wall time (association to
release). pynetdicom's example ``storescp`` (no fsync, no ledger) and a bare pynetdicom listener (the node's
AE and contexts, a handler that only takes the bytes) are measured too, to tell the library's share of the gap
from the node's durability. Target (issue 4): node >= 0.5x storescp's instances/s (median of the runs).

    python bench/bench_ingest.py [--runs 3] [--seed 11] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TARGET_RATIO = 0.5
SENDER_AE = "BENCHSCU"


@dataclass(frozen=True)
class Run:
    receiver: str
    seconds: float
    instances: int
    megabytes: float

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout_s:g} s") from None
            time.sleep(0.05)


def dcmtk_tool(name: str) -> str | None:
    """DCMTK's ``name``, skipping the virtualenv's bin folder (pynetdicom installs its own ``storescp``)."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return shutil.which(name, path=f"{path}{os.pathsep}/usr/bin")


def _tool(name: str) -> str:
    found = dcmtk_tool(name)
    if found is None:
        raise FileNotFoundError(f"DCMTK {name} not found: apt-get install dcmtk")
    return found


def synthesise_full(out: Path, seed: int) -> list[Path]:
    """One full-size synthetic study; returns its DICOM files."""
    subprocess.run([sys.executable, "-m", "node.cli", "synth", "--out", str(out), "--cases", "1", "--seed",
                    str(seed), "--size", "full", "--lesions", "1"], check=True, stdout=subprocess.DEVNULL)
    return sorted((out / "case0000").rglob("*.dcm"))


def storescu(files: list[Path], called_ae: str, port: int) -> float:
    """Send ``files`` on one association with DCMTK storescu; returns the wall time in seconds."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    argv = [_tool("storescu"), "-aet", SENDER_AE, "-aec", called_ae, "--required", "127.0.0.1", str(port),
            *map(str, files)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@contextmanager
def storescp_receiver(folder: Path) -> Iterator[tuple[str, int, Callable[[], int]]]:
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    folder.mkdir(parents=True)
    process = subprocess.Popen([_tool("storescp"), "--aetitle", "STORESCP", "--output-directory", str(folder),
                                "+xa", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield "STORESCP", port, lambda: sum(1 for p in folder.iterdir() if p.is_file())
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def pynetdicom_receiver(folder: Path) -> Iterator[tuple[str, int, Callable[[], int]]]:
    """pynetdicom's own example storescp (files written, no fsync, no ledger): the node's library baseline."""
    port = free_port()
    folder.mkdir(parents=True)
    process = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", "-aet", "PYNETDICOM", "-od",
                                str(folder), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield "PYNETDICOM", port, lambda: sum(1 for p in folder.iterdir() if p.is_file())
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def bare_receiver(folder: Path) -> Iterator[tuple[str, int, Callable[[], int]]]:
    """The least any pynetdicom listener does: the node's AE (same contexts and PDU size) whose C-STORE handler
    only takes the received bytes and counts them: no file, no fsync, no database. pynetdicom's floor."""
    from pynetdicom import evt

    from node.config import Settings
    from node.scp.server import build_ae

    received = [0]

    def handle_store(event: evt.Event) -> int:
        event.encoded_dataset(include_meta=False)
        received[0] += 1
        return 0

    ae = build_ae(Settings(ae_title="BARE"))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    assert server is not None
    try:
        yield "BARE", int(server.server_address[1]), lambda: received[0]
    finally:
        server.shutdown()


@contextmanager
def node_receiver(spool: Path) -> Iterator[tuple[str, int, Callable[[], int]]]:
    from node.cli.serve import start_node
    from node.config import Settings

    port = free_port()
    environ = {**os.environ, "AINODE_AE_TITLE": "AINODE", "AINODE_PORT": str(port),
               "AINODE_BIND_ADDRESS": "127.0.0.1", "AINODE_SPOOL_DIR": str(spool.resolve()),
               "AINODE_QUIET_PERIOD_S": "3600"}
    for name in ("AINODE_DATABASE_URL", "AINODE_DESTINATIONS", "AINODE_CONFIG", "AINODE_ACCEPTED_CALLING_AETS"):
        environ.pop(name, None)
    node = start_node(Settings.load(env=environ), worker=False)  # the listener alone: what is measured is ingest
    try:
        wait_listening(port)
        yield "AINODE", port, lambda: sum(1 for p in spool.glob("*/*/*.dcm"))
    finally:
        node.stop()


RECEIVERS = {"storescp": storescp_receiver, "pynetdicom": pynetdicom_receiver, "bare": bare_receiver,
             "node": node_receiver}


def measure(name: str, files: list[Path], megabytes: float, work: Path, runs: int) -> list[Run]:
    results: list[Run] = []
    for i in range(runs):
        folder = work / f"{name}-{i}"
        receiver = RECEIVERS[name]
        with receiver(folder) as (ae, port, count):
            seconds = storescu(files, ae, port)
            stored = count()
        if stored != len(files):
            raise RuntimeError(f"{name} run {i}: {stored} of {len(files)} instances stored")
        results.append(Run(name, seconds, len(files), megabytes))
        shutil.rmtree(folder, ignore_errors=True)
    return results


def durability_floor_ms(folder: Path, size: int, count: int = 100) -> tuple[float, float]:
    """Median milliseconds of what one durable instance costs on this file system, without any DICOM:
    (write + fsync + rename + directory fsync of a ``size``-byte file, one SQLite WAL commit with synchronous=FULL).

    Their sum bounds a one-association listener that answers only after both: at most 1000 / sum instances/s.
    """
    import sqlite3
    import statistics

    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    spool: list[float] = []
    for i in range(count):
        start = time.perf_counter()
        part = folder / f"{i}.part"
        with part.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        part.replace(folder / f"{i}.dcm")
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        spool.append(time.perf_counter() - start)
    db = sqlite3.connect(folder / "floor.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (a TEXT)")
    commits: list[float] = []
    for i in range(count):
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (str(i),))
        db.execute("COMMIT")
        commits.append(time.perf_counter() - start)
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(spool) * 1000, statistics.median(commits) * 1000


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, help="work folder (kept); default: a temporary folder")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if dcmtk_tool(tool) is None:
            print(f"{tool} not found: apt-get install dcmtk", file=sys.stderr)
            return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        files = synthesise_full(work / "study", args.seed)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"study: {len(files)} instances, {megabytes:.1f} MB; {args.runs} runs each; "
              f"load average before: {load_average()}; {os.cpu_count()} CPUs")
        medians: dict[str, Run] = {}
        print(f"{'receiver':<10} {'run':>3} {'seconds':>8} {'inst/s':>8} {'MB/s':>8}")
        for name in RECEIVERS:
            runs = measure(name, files, megabytes, work, args.runs)
            for i, run in enumerate(runs):
                print(f"{name:<10} {i:>3} {run.seconds:>8.2f} {run.instances_per_s:>8.1f} {run.mb_per_s:>8.1f}")
            medians[name] = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
        print(f"\n{'median':<10} {'seconds':>8} {'inst/s':>8} {'MB/s':>8}")
        for name, run in medians.items():
            print(f"{name:<10} {run.seconds:>8.2f} {run.instances_per_s:>8.1f} {run.mb_per_s:>8.1f}")
        ratio = medians["node"].instances_per_s / medians["storescp"].instances_per_s
        print(f"pynetdicom / storescp = "
              f"{medians['pynetdicom'].instances_per_s / medians['storescp'].instances_per_s:.2f}x, "
              f"node / pynetdicom = {medians['node'].instances_per_s / medians['pynetdicom'].instances_per_s:.2f}x, "
              f"bare pynetdicom listener / storescp = "
              f"{medians['bare'].instances_per_s / medians['storescp'].instances_per_s:.2f}x (the library's ceiling), "
              f"node / bare = {medians['node'].instances_per_s / medians['bare'].instances_per_s:.2f}x")
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        spool_ms, commit_ms = durability_floor_ms(work / "floor", int(megabytes * 1e6 / len(files)))
        floor = spool_ms + commit_ms
        print(f"durability floor per instance on this disk: spool write+fsync+rename+dir fsync {spool_ms:.2f} ms, "
              f"SQLite WAL commit (synchronous=FULL) {commit_ms:.2f} ms -> one association can never exceed "
              f"{1000 / floor:.0f} inst/s = {1000 / floor / medians['storescp'].instances_per_s:.2f}x storescp")
        print(f"\nnode / storescp = {ratio:.2f}x ({verdict} the target >= {TARGET_RATIO}x); "
              f"load average after: {load_average()}")
        return 0 if ratio >= TARGET_RATIO else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
