"""Benchmark: C-STORE ingest of the node's listener vs Orthanc, DCMTK ``storescp`` and a bare pynetdicom listener,
on one association and on 4 parallel associations (issue 12, item 5).

Sender: DCMTK ``storescu`` (``TCP_NODELAY=1``), one process per association, each sending one full-size synthetic
study (``ainode synth --size full``, ~200 instances); 4 associations = 4 ``storescu`` processes at once, each
with its own study (for the node, equal SOP Instance UIDs would be duplicates). Each measurement starts a fresh
receiver with an empty folder; the time is from the first ``storescu`` start to the last one's end. Each run also
reports the CPU time the receiver's processes and the senders (``storescu``) spent per instance: on a 2-core
machine the senders share the cores with the receiver, so they bound what any receiver can reach.

The run folders are removed only at the end (``--remove-between-runs``: each one as soon as its run is over, as
this bench did until 2026-12-06). On ext4 *without a journal* (this VM's root file system) a new inode skips every
inode of its group freed in the last 1-6 minutes (``recently_deleted``), so creating a file right after removing
the previous run's ~800 costs a scan per file: tens of per cent of either receiver's CPU, more for Orthanc (a
directory and a file per instance) than for the node (a file): the ratios then say more about that scan than about
the receivers (docs/benchmarks.md, "Issue 12, seventh round"). Receivers:

* ``node``: ``start_node`` as ``ainode serve --no-worker`` runs it, with its **defaults** (full durability: each
  instance fsynced, renamed into place and its folder fsynced before Success; the ledger rows group-committed
  and flushed before the release is answered; ``listener_processes`` = min(CPUs, 4) processes on the port);
* ``orthanc``: Orthanc (its defaults; SQLite index and storage in a temp folder, ``TCP_NODELAY=1``), started on
  free ports with a generated config;
* ``storescp``: DCMTK ``storescp --fork`` (``TCP_NODELAY=1``), files written, no fsync;
* ``bare``: the node's pynetdicom AE in one process, a handler that only takes the bytes: pynetdicom's floor.

Targets: node >= 1.0x Orthanc on one association; node >= 1.5x Orthanc on 4 associations (medians). The summary
also gives each run's ratio (node and Orthanc measured in the same minute): the spread the host's state causes.

    python bench/bench_ingest.py [--runs 3] [--seed 11] [--only node,orthanc] [--keep DIR] [--remove-between-runs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TARGET_ONE = 1.0  # node / Orthanc, one association
TARGET_FOUR = 1.5  # node / Orthanc, 4 parallel associations
PARALLEL = 4
SENDER_AE = "BENCHSCU"


@dataclass(frozen=True)
class Run:
    receiver: str
    seconds: float
    instances: int
    megabytes: float
    receiver_cpu_s: float = 0.0  # the receiver's processes (utime + stime) during the send
    receiver_kernel_s: float = 0.0  # of which in the kernel
    sender_cpu_s: float = 0.0  # the storescu processes (utime + stime)

    def per_instance_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.instances

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


def synthesise_full(out: Path, seed: int, cases: int = PARALLEL) -> list[list[Path]]:
    """``cases`` full-size synthetic studies; returns the DICOM files of each."""
    subprocess.run([sys.executable, "-m", "node.cli", "synth", "--out", str(out), "--cases", str(cases), "--seed",
                    str(seed), "--size", "full", "--lesions", "1"], check=True, stdout=subprocess.DEVNULL)
    return [sorted((out / f"case{n:04d}").rglob("*.dcm")) for n in range(cases)]


def storescu(studies: list[list[Path]], called_ae: str, port: int) -> tuple[float, float]:
    """Send each study on its own association, one DCMTK storescu process each, all at once; returns the wall time
    in seconds from the first start to the last end and the CPU seconds (user + system) the senders used."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    processes = [subprocess.Popen([_tool("storescu"), "-aet", f"{SENDER_AE}{n}", "-aec", called_ae, "--required",
                                   "127.0.0.1", str(port), *map(str, files)], env=env, stdout=subprocess.DEVNULL)
                 for n, files in enumerate(studies)]
    cpu = 0.0
    for process in processes:  # reaped here, with their resource usage
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
    seconds = time.perf_counter() - start
    codes = [process.returncode for process in processes]
    if any(codes):
        raise RuntimeError(f"storescu exit statuses {codes}")
    return seconds, cpu


@contextmanager
def storescp_receiver(folder: Path) -> Iterator[tuple[str, int, Callable[[], int]]]:
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    folder.mkdir(parents=True)
    process = subprocess.Popen([_tool("storescp"), "--fork", "--aetitle", "STORESCP", "--output-directory",
                                str(folder), "+xa", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield "STORESCP", port, lambda: sum(1 for p in folder.iterdir() if p.is_file())
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
    environ["AINODE_ALLOW_DEMO_MODELS"] = "1"  # no worker runs: the models are never used
    # the listener alone (what is measured is ingest), its heap frozen as ainode serve's is
    node = start_node(Settings.load(env=environ), worker=False, freeze_heap=True)
    try:
        wait_listening(port)
        # let the start-up work finish first (each listener process loads the job layer in its dispatcher thread,
        # ~1.5 s of CPU): a node receives studies long after it started, and on 2 cores that burst would count
        # as ingest (one association measured 77-83 inst/s instead of ~200 when it overlapped)
        from cpu_ingest import _settled

        _settled(os.getpid())
        # the ledger's count: every process flushed its group commit before answering the release
        yield "AINODE", port, lambda: len(node.listener.repository.known_paths())
    finally:
        node.stop()


@contextmanager
def orthanc_receiver(folder: Path) -> Iterator[tuple[str, int, Callable[[], int]]]:
    """Orthanc with its defaults (SQLite index, files in a temp folder), on free ports, ``TCP_NODELAY=1``."""
    import json
    import urllib.request

    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).is_file():
        raise FileNotFoundError("Orthanc not found: apt-get install orthanc")
    folder.mkdir(parents=True)
    http_port, dicom_port = free_port(), free_port()
    config = folder / "config.json"
    config.write_text(json.dumps({
        "Name": "bench-ingest", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "StorageCompression": False, "Plugins": [], "HttpServerEnabled": True, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomServerEnabled": True,
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
    }), encoding="utf-8")
    env = {**os.environ, "TCP_NODELAY": "1"}
    process = subprocess.Popen([binary, str(config)], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def count() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as answer:
            return int(json.loads(answer.read())["CountInstances"])

    try:
        wait_listening(http_port, 60)
        wait_listening(dicom_port, 60)
        yield "ORTHANC", dicom_port, count
    finally:
        process.terminate()
        process.wait(30)


RECEIVERS = {"node": node_receiver, "orthanc": orthanc_receiver, "storescp": storescp_receiver,
             "bare": bare_receiver}


def measure(name: str, studies: list[list[Path]], megabytes: float, work: Path, run: int,
            remove: bool = False) -> Run:
    """One fresh receiver, the studies sent at once (one association each); ``remove``: its folder removed after."""
    from cpu_ingest import tree_cpu_s

    folder = work / f"{name}-{len(studies)}-{run}"
    instances = sum(len(files) for files in studies)
    with RECEIVERS[name](folder) as (ae, port, count):
        me = os.getpid()  # the receiver runs in this process (node, bare) or in its children (the others)
        before, kernel_before = tree_cpu_s(me), tree_cpu_s(me, (12,))
        seconds, sender_cpu = storescu(studies, ae, port)
        time.sleep(0.2)  # the last group commit and the files' close (part of the receiver's work)
        receiver_cpu, kernel = tree_cpu_s(me) - before, tree_cpu_s(me, (12,)) - kernel_before
        stored = count()
    if stored != instances:
        raise RuntimeError(f"{name} ({len(studies)} associations) run {run}: {stored} of {instances} stored")
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
    return Run(name, seconds, instances, megabytes, receiver_cpu, kernel, sender_cpu)


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


def median_rate(runs: list[Run]) -> float:
    return statistics.median(run.instances_per_s for run in runs)


def median_ms(runs: list[Run], field: str) -> float:
    """The median over ``runs`` of a CPU time field, in milliseconds per instance."""
    return statistics.median(run.per_instance_ms(getattr(run, field)) for run in runs)


def cpu_budget(node: list[Run], orthanc: list[Run]) -> str:
    """The 4-association ratio the CPU allows: on a machine the senders and the receiver keep busy, a run's wall time
    follows the CPU both spend per instance; so node / Orthanc is at most (Orthanc's + its senders' CPU) / (the
    node's + its senders'), and TARGET_FOUR x asks the node for at most (Orthanc's + senders') / TARGET_FOUR less its
    senders' per instance."""
    rx_node, kernel_node, tx_node = (median_ms(node, f) for f in ("receiver_cpu_s", "receiver_kernel_s",
                                                                  "sender_cpu_s"))
    rx_orthanc, tx_orthanc = median_ms(orthanc, "receiver_cpu_s"), median_ms(orthanc, "sender_cpu_s")
    bound = (rx_orthanc + tx_orthanc) / (rx_node + tx_node)
    needed = (rx_orthanc + tx_orthanc) / TARGET_FOUR - tx_node
    return (f"{PARALLEL} associations, CPU per instance (receiver + senders): node {rx_node:.2f} + {tx_node:.2f} ms, "
            f"Orthanc {rx_orthanc:.2f} + {tx_orthanc:.2f} ms: the CPU allows the node {bound:.2f}x Orthanc's rate; "
            f"{TARGET_FOUR}x needs the node at <= {needed:.2f} ms per instance ({kernel_node:.2f} ms of its "
            f"{rx_node:.2f} are in the kernel)")


def paired_ratios(node: list[Run], orthanc: list[Run], target: float) -> str:
    """Each run's node / Orthanc ratio (both measured in the same minute, one after the other): how far the host's
    minute-to-minute state moves the ratio, which the medians of the rates hide."""
    ratios = sorted(n.instances_per_s / o.instances_per_s for n, o in zip(node, orthanc, strict=True))
    met = sum(ratio >= target for ratio in ratios)
    return (f"median {statistics.median(ratios):.2f}x, {ratios[0]:.2f}-{ratios[-1]:.2f}x, {met} of {len(ratios)} "
            f"runs >= {target}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--only", help="comma-separated receivers (default: all of " + ", ".join(RECEIVERS) + ")")
    parser.add_argument("--keep", type=Path, help="work folder (kept); default: a temporary folder")
    parser.add_argument("--remove-between-runs", action="store_true",
                        help="remove each run's folder as soon as it is over (the next run then creates its files "
                             "right after ~800 removals: see the module docstring)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(RECEIVERS)
    for tool in ("storescu", "storescp"):
        if dcmtk_tool(tool) is None:
            print(f"{tool} not found: apt-get install dcmtk", file=sys.stderr)
            return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        studies = synthesise_full(work / "study", args.seed)
        megabytes = [sum(p.stat().st_size for p in files) / 1e6 for files in studies]
        from node.config import Settings

        print(f"studies: {PARALLEL} x ~{len(studies[0])} instances, {megabytes[0]:.1f} MB each; {args.runs} runs "
              f"each; load average before: {load_average()}; {os.cpu_count()} CPUs; node listener_processes "
              f"{Settings().effective_listener_processes}")
        one: dict[str, list[Run]] = {name: [] for name in names}
        four: dict[str, list[Run]] = {name: [] for name in names}
        print(f"run folders removed {'after each run' if args.remove_between_runs else 'at the end'}")
        print(f"{'receiver':<10} {'run':>3} {'assocs':>6} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} "
              f"{'rx CPU ms/inst':>15} {'(kernel)':>8} {'tx CPU ms/inst':>15}  load")
        for i in range(args.runs):  # receivers interleaved, so each run of each is measured in the same minutes
            for name in names:
                for results, batch in ((one, studies[:1]), (four, studies)):
                    run = measure(name, batch, sum(megabytes[:len(batch)]), work, i, args.remove_between_runs)
                    results[name].append(run)
                    print(f"{name:<10} {i:>3} {len(batch):>6} {run.seconds:>8.2f} {run.instances_per_s:>8.1f} "
                          f"{run.mb_per_s:>8.1f} {run.per_instance_ms(run.receiver_cpu_s):>15.2f} "
                          f"{run.per_instance_ms(run.receiver_kernel_s):>8.2f} "
                          f"{run.per_instance_ms(run.sender_cpu_s):>15.2f}  {load_average()}", flush=True)
        reference = "orthanc" if "orthanc" in names else None
        print(f"\n{'median':<10} {'1-assoc inst/s':>15} {'4-assoc inst/s':>15} {'1-assoc/Orthanc':>16} "
              f"{'4-assoc/Orthanc':>16} {'4-assoc rx CPU':>15} {'(kernel)':>8} {'tx CPU':>7}")
        for name in names:
            r1, r4 = median_rate(one[name]), median_rate(four[name])
            ratios = ("", "")
            if reference is not None:
                ratios = (f"{r1 / median_rate(one[reference]):.2f}x", f"{r4 / median_rate(four[reference]):.2f}x")
            rx, kernel, tx = (median_ms(four[name], field) for field in ("receiver_cpu_s", "receiver_kernel_s",
                                                                         "sender_cpu_s"))
            print(f"{name:<10} {r1:>15.1f} {r4:>15.1f} {ratios[0]:>16} {ratios[1]:>16} {rx:>15.2f} {kernel:>8.2f} "
                  f"{tx:>7.2f}")
        if reference is not None and "node" in names:
            print(cpu_budget(four["node"], four[reference]))
            print(f"node / Orthanc run by run: one association "
                  f"{paired_ratios(one['node'], one[reference], TARGET_ONE)}; {PARALLEL} associations "
                  f"{paired_ratios(four['node'], four[reference], TARGET_FOUR)}")
        spool_ms, commit_ms = durability_floor_ms(work / "floor", int(megabytes[0] * 1e6 / len(studies[0])))
        print(f"durability floor per instance on this disk: spool write+fsync+rename+dir fsync {spool_ms:.2f} ms, "
              f"SQLite WAL commit (synchronous=FULL) {commit_ms:.2f} ms")
        if reference is None or "node" not in names:
            return 0
        ratio_one = median_rate(one["node"]) / median_rate(one[reference])
        ratio_four = median_rate(four["node"]) / median_rate(four[reference])
        met = ratio_one >= TARGET_ONE and ratio_four >= TARGET_FOUR
        print(f"\nnode / Orthanc: one association {ratio_one:.2f}x (target >= {TARGET_ONE}x), {PARALLEL} associations "
              f"{ratio_four:.2f}x (target >= {TARGET_FOUR}x): {'met' if met else 'MISSED'}; "
              f"load average after: {load_average()}")
        return 0 if met else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
