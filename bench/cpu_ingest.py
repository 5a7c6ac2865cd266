"""CPU cost of ingest: CPU milliseconds the receiver's processes spend per instance received (issue 12).

Wall-clock ingest rates are noisy on a shared machine; the CPU time the receiving processes consume is not (much).
The receiver (``node``: ``start_node`` with its defaults, ``orthanc``: Orthanc with its defaults, or ``bare``:
pynetdicom's floor, see ``bench_ingest.py``) runs in a child process; its process tree's utime + stime
(``/proc/<pid>/stat``) is read before and after DCMTK ``storescu`` sends the studies (one association each, all
at once). On a host shared with other machines the CPU time per instance itself varies by tens of per cent from
one hour to the next: compare receivers measured in the same minutes.

    python bench/cpu_ingest.py --studies /work/bench-data/ingest/study [--receiver node|orthanc|bare] [--assocs 1]
        [--runs 3] [--max-pdu 131072] [--profile out.prof]

``--profile`` (node only) runs the listener in the child process alone (``listener_processes`` 1) with cProfile
in every thread and writes the merged stats to the file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import SENDER_AE, _tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support
from tests.support.waiting import wait_cpu_settled

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int, fields_at: tuple[int, ...] = (11, 12)) -> float:
    """utime + stime (or the ``/proc/<pid>/stat`` fields after the name at ``fields_at``) of ``root`` and all its
    live descendants, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(fields[i]) for i in fields_at) / TICK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def child(receiver: str, spool: Path, max_pdu: int, profile: Path | None) -> None:
    """Run the receiver; print its port; stop when stdin closes."""
    from bench_ingest import bare_receiver, node_receiver, orthanc_receiver

    os.environ["AINODE_MAX_PDU"] = str(max_pdu)
    if profile is not None:
        _profile_node(spool, max_pdu, profile)
        return
    if receiver == "bare":
        import node.config

        original = node.config.Settings.__init__

        def patched(self: node.config.Settings, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("max_pdu", max_pdu)
            original(self, *args, **kwargs)  # type: ignore[arg-type]

        node.config.Settings.__init__ = patched  # type: ignore[method-assign]
    factory = {"bare": bare_receiver, "orthanc": orthanc_receiver}.get(receiver, node_receiver)
    with factory(spool) as (ae, port, count):
        print(ae, port, flush=True)
        for _line in sys.stdin:
            print(count(), flush=True)


def _profile_node(spool: Path, max_pdu: int, out: Path) -> None:
    import cProfile
    import pstats
    import threading

    from node.config import Settings
    from node.scp.server import start_listener

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:  # every thread started from now on
        profiler = cProfile.Profile(time.thread_time)  # CPU time of this thread, not wall time
        with lock:
            profiles.append(profiler)
        profiler.runcall(run, self)

    threading.Thread.run = profiled  # type: ignore[method-assign]
    settings = Settings(ae_title="AINODE", port=0, bind_address="127.0.0.1", spool_dir=spool, max_pdu=max_pdu,
                        listener_processes=1, quiet_period_s=3600)
    with start_listener(settings) as handle:
        print("AINODE", handle.port, flush=True)
        for _line in sys.stdin:
            print(len(handle.repository.known_paths()), flush=True)
    stats = pstats.Stats(*profiles) if profiles else None
    if stats is not None:
        stats.dump_stats(str(out))


def host_cpu() -> tuple[float, float, float]:
    """The whole host's (busy, iowait, idle) CPU seconds since boot, from ``/proc/stat``."""
    fields = [int(v) / TICK for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    return user + nice + system + irq + softirq + steal, iowait, idle


def send(studies: list[list[Path]], ae: str, port: int) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    processes = [subprocess.Popen([_tool("storescu"), "-aet", f"{SENDER_AE}{n}", "-aec", ae, "--required",
                                   "127.0.0.1", str(port), *map(str, files)], env=env, stdout=subprocess.DEVNULL)
                 for n, files in enumerate(studies)]
    if any(process.wait() for process in processes):
        raise RuntimeError("storescu failed")


def _settled(pid: int, timeout_s: float = 30.0) -> float:
    """The tree's CPU seconds once its start-up work is done (under 10 ms of CPU in 0.5 s; lazy imports of
    background threads would otherwise count as ingest)."""
    return wait_cpu_settled(lambda: tree_cpu_s(pid), threshold_s=0.01, timeout_s=timeout_s)


def measure(args: argparse.Namespace, studies: list[list[Path]], run: int) -> tuple[float, float, float]:
    """(CPU ms per instance, wall seconds, system CPU ms per instance) of one fresh receiver; prints how busy the
    whole host was during the send (all processes: the receiver, the senders, anything else running)."""
    spool = args.work / f"{args.receiver}-{args.assocs}-{run}"
    command = [sys.executable, __file__, "--child", args.receiver, "--spool", str(spool), "--max-pdu",
               str(args.max_pdu)]
    if args.profile:
        command += ["--profile", str(args.profile)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        ae, port = process.stdout.readline().split()
        before = _settled(process.pid)
        system_before = tree_cpu_s(process.pid, (12,))
        host_before = host_cpu()
        start = time.perf_counter()
        send(studies, ae, int(port))
        seconds = time.perf_counter() - start
        host = [b - a for a, b in zip(host_before, host_cpu(), strict=True)]
        time.sleep(0.3)
        after = tree_cpu_s(process.pid)
        system = tree_cpu_s(process.pid, (12,)) - system_before
        process.stdin.write("count\n")
        process.stdin.flush()
        count = int(process.stdout.readline())
    finally:
        process.stdin.close()
        process.wait(60)
    instances = sum(len(files) for files in studies)
    if count != instances:
        raise RuntimeError(f"{count} of {instances} stored")
    capacity = sum(host)
    print(f"  host during the send: {100 * host[0] / capacity:.0f} % busy, {100 * host[1] / capacity:.0f} % iowait, "
          f"{100 * host[2] / capacity:.0f} % idle", flush=True)
    return (after - before) * 1000 / instances, seconds, system * 1000 / instances


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--spool", type=Path)
    parser.add_argument("--studies", type=Path, default=Path("/work/bench-data/ingest/study"))
    parser.add_argument("--receiver", default="node", choices=("node", "orthanc", "bare"))
    parser.add_argument("--assocs", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-pdu", type=int, default=131072, help="the node's maximum PDU (its default)")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cpu-ingest"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.spool, args.max_pdu, args.profile)
        return 0
    import shutil

    studies = [sorted((args.studies / f"case{n:04d}").rglob("*.dcm")) for n in range(args.assocs)]
    results = []
    for run in range(args.runs):
        shutil.rmtree(args.work, ignore_errors=True)
        ms, seconds, system = measure(args, studies, run)
        results.append(ms)
        print(f"{args.receiver} assocs={args.assocs} max_pdu={args.max_pdu} run {run}: {ms:.2f} CPU ms/instance "
              f"({system:.2f} in the kernel), {seconds:.2f} s wall", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"median {statistics.median(results):.2f} CPU ms/instance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
