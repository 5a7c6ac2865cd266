"""Several listener processes on one port (``listener_processes``; node/scp/pool.py, node/scp/balance.py), started by
``start_node`` as ``ainode serve`` does: parallel associations all stored once, and a killed listener process
loses nothing it confirmed while the others go on."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom.association import Association

from node.cli.serve import RunningNode, start_node
from node.config import Settings
from node.delivery.scu import wait_reactor_resumed
from tests.scp.fixtures import associate, send, sop_instance_uid
from tests.support.studies import SynthCase
from tests.support.waiting import wait_cpu_settled, wait_for


def variants(case: SynthCase, out: Path, count: int) -> list[list[Path]]:
    """``count`` copies of the small study, each with its own Study / Series / SOP Instance UIDs."""
    studies = []
    for n in range(count):
        study, series = generate_uid(), dict[str, str]()
        files: list[Path] = []
        for path in case.all:
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            target = out / f"v{n}" / f"{len(files):04d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            files.append(target)
        studies.append(files)
    return studies


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[[int], RunningNode]]:
    nodes: list[RunningNode] = []

    def factory(processes: int) -> RunningNode:
        settings = Settings.load(env={}, overrides={
            "port": 0, "bind_address": "127.0.0.1", "spool_dir": tmp_path / "spool", "min_free_disk_bytes": 0,
            "quiet_period_s": 3600, "listener_processes": processes, "allow_demo_models": True,
        })
        node = start_node(settings, worker=False)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop()


def _lost(node: RunningNode, files: list[Path]) -> list[Path]:
    """Files whose instance is not in the ledger, or whose spooled copy is gone or differs from the ledger."""
    lost = []
    for path in files:
        known = node.listener.repository.find_instance(sop_instance_uid(path))
        spooled = node.listener.spool.path(known.path) if known else None
        if known is None or spooled is None or not spooled.is_file() or \
                hashlib.sha256(spooled.read_bytes()).hexdigest() != known.sha256:
            lost.append(path)
    return lost


def test_parallel_associations_into_several_listener_processes(
    tmp_path: Path, synth_case: SynthCase, node_factory: Callable[[int], RunningNode],
) -> None:
    studies = variants(synth_case, tmp_path / "studies", 4)
    node = node_factory(3)
    assert node.pool is not None and len(node.pool.pids) == 2
    jobs = [*studies, studies[0]]  # four studies at once, and the first one twice (a duplicate in parallel)
    results: list[list[int]] = [[] for _ in jobs]

    def run(n: int) -> None:
        results[n] = send(node.listener.port, jobs[n], calling=f"PACS{n}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert [set(statuses) for statuses in results] == [{0}] * len(jobs)
    # every process flushed its group commit before answering the release: the ledger is complete now
    assert _lost(node, [path for files in studies for path in files]) == []
    stored = {path.relative_to(node.listener.spool.root) for path in node.listener.spool.root.glob("*/*/*.dcm")}
    assert len(stored) == sum(len(files) for files in studies)  # one file per instance, the duplicate included
    events = [e.event for e in node.listener.repository.audit_trail()]
    assert events.count("stored") == len(stored) and "store-rejected" not in events
    assert not (node.listener.spool.root / ".orphans").exists()


def test_each_listener_process_freezes_its_start_up_heap(node_factory: Callable[[int], RunningNode]) -> None:
    """pynetdicom's server forces a full garbage collection every 30 s, with the GIL held: each listener process
    moves what its start-up (and the job layer its dispatcher loads) left into the permanent generation, so that
    collection walks only what came since (node/heap.py), instead of ~0.3 million objects (~0.15 s each time)."""
    node = node_factory(2)
    log = node.settings.spool_dir / "listener.log"
    pattern = re.compile(r"listener process: start-up heap frozen \((\d+) objects")

    def frozen() -> int | None:
        found = pattern.search(log.read_text(errors="replace")) if log.exists() else None
        return int(found.group(1)) if found else None

    count = wait_for(frozen, 60, lambda: f"no 'heap frozen' line in listener.log: {log.read_text()[-2000:]!r}")
    assert count > 100_000  # the start-up and the job layer, not a handful of objects


def _server_pid(assoc: Association, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of ``assoc``'s TCP connection (from /proc)."""
    local_port = assoc.dul.socket.socket.getsockname()[1]  # type: ignore[union-attr]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:  # noqa: PTH123
            for line in list(handle)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == local_port:  # remote end = our client socket
                    inodes.add(fields[9])
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    return None


def _cpu_s(pids: list[int]) -> float:
    """utime + stime of ``pids``, in seconds."""
    total = 0.0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def test_parallel_associations_are_spread_evenly_over_the_processes(
    node_factory: Callable[[int], RunningNode],
) -> None:
    """Each new connection goes to a least busy process (with SO_REUSEPORT's hash, two or three of four parallel
    associations often shared one process while another idled)."""
    node = node_factory(2)
    assert node.pool is not None
    pids = [os.getpid(), node.pool.pids[1]]
    # Until the listener processes have done their start-up work (each loads the job layer in a thread, ~1.5 s of
    # CPU): meanwhile a process may get no CPU for 50 ms on a loaded machine, and its sibling then takes a waiting
    # connection itself, by design.
    wait_cpu_settled(lambda: _cpu_s(pids), threshold_s=0.02, timeout_s=60.0)
    splits = []
    # four rounds, each once the one before ended (the counts went back down); a process that stays busier than
    # its sibling for 50 ms takes the connection itself, which a loaded CI machine can make happen in one round:
    # three of four rounds must split 3 + 3 (SO_REUSEPORT's hash did in 31 % of rounds: 9 % passed three of four)
    for _ in range(4):
        held = [associate(node.listener.port, calling=f"PACS{n}") for n in range(6)]
        assert all(assoc.is_established for assoc in held)
        owners = [_server_pid(assoc, pids) for assoc in held]
        splits.append(sorted(owners.count(pid) for pid in pids))
        for assoc in held:
            assoc.release()
        load = node.listener.server.load
        assert load is not None
        deadline = time.monotonic() + 30
        while load.counts() != [0, 0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert load.counts() == [0, 0]
    assert splits.count([3, 3]) >= 3, splits


def test_a_killed_listener_process_loses_nothing_it_confirmed(
    tmp_path: Path, synth_case: SynthCase, node_factory: Callable[[int], RunningNode],
) -> None:
    victim_files, survivor_files = variants(synth_case, tmp_path / "studies", 2)
    node = node_factory(2)
    assert node.pool is not None
    child = node.pool.pids[1]
    victim = survivor = None
    spare = []
    for _ in range(40):  # connections are spread over the two processes: find one on each
        assoc = associate(node.listener.port)
        assert assoc.is_established
        pid = _server_pid(assoc, [child, os.getpid()])
        if pid == child and victim is None:
            victim = assoc
        elif pid == os.getpid() and survivor is None:
            survivor = assoc
        else:
            spare.append(assoc)
        if victim is not None and survivor is not None:
            break
    for assoc in spare:
        assoc.release()
    assert victim is not None and survivor is not None, "no association landed on one of the processes"

    def store(assoc: Association, path: Path) -> bool:
        try:
            wait_reactor_resumed(assoc)
            response = assoc.send_c_store(path)
        except RuntimeError:  # the association is gone
            return False
        return "Status" in response and int(response.Status) == 0

    half = len(victim_files) // 2
    confirmed = [path for path in victim_files[:half] if store(victim, path)]
    assert len(confirmed) == half
    os.kill(child, 9)  # SIGKILL of the listener process mid-association
    deadline = time.monotonic() + 30
    while victim.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    rest = [store(victim, path) for path in victim_files[half:]]
    assert not any(rest), "an instance was confirmed by a killed listener process"
    assert all(store(survivor, path) for path in survivor_files)  # the other process goes on receiving
    survivor.release()
    deadline = time.monotonic() + 60
    while (node.pool.restarts < 1 or _lost(node, confirmed)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the pool restarts the process; its start-up records what it had acknowledged
    assert node.pool.restarts == 1 and node.pool.pids[1] != child
    assert _lost(node, confirmed) == [], "an instance confirmed by the killed process was lost"
    assert _lost(node, survivor_files) == []
    assert send(node.listener.port, victim_files) == [0] * len(victim_files)  # the sender resends the study
    assert _lost(node, victim_files) == []
