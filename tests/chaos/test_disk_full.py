"""The spool's filesystem (a 64 MiB tmpfs: spool, SQLite ledger, embedded broker) filled to 100 %: the node
refuses instances, stays up, and once space is freed it processes studies again and restarts cleanly (no
half-written broker file stops the next start)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.conftest import NodeFactory, Pacs, study_files
from tests.chaos.harness import ServeProcess, echo, store, study_uid, wait_for

OUT_OF_RESOURCES = 0xA700


def _fill(folder: Path) -> int:
    """Write zeros into ``folder/filler`` until the filesystem is full; the bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with (folder / "filler").open("wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(block)
            except OSError:
                break
    with (folder / "filler-tail").open("wb", buffering=0) as handle:  # the last, partial block
        for _ in range(1 << 20):
            try:
                handle.write(b"\0" * 512)
            except OSError:
                break
    return written


@pytest.mark.slow
def test_spool_disk_full_then_freed(small_fs: Path, studies: list[Path], pacs: Pacs, make_node: NodeFactory) -> None:
    pacs.start()
    node = make_node(pacs.destination, spool=small_fs / "spool", AINODE_MIN_FREE_DISK_BYTES="1M")
    try:
        _full_then_freed(node, small_fs, studies, pacs)
    finally:  # the spool goes with the filesystem: keep the worker's log for a failure's post-mortem
        if (node.spool / "worker.log").is_file():
            (node.root / "worker.log").write_bytes((node.spool / "worker.log").read_bytes())


def _full_then_freed(node: ServeProcess, small_fs: Path, studies: list[Path], pacs: Pacs) -> None:
    node.start().wait_listening()
    node.wait_worker_ready()
    first, second = studies[0], studies[1]

    _fill(small_fs)
    full_at = time.monotonic()
    statuses = store(node.port, study_files(first)[:5])
    time.sleep(20)  # polls, beat, the worker's writes: all failing for a while
    node.check_running()
    assert echo(node.port), "the listener must keep answering on a full disk"

    for path in small_fs.glob("filler*"):
        path.unlink()
    freed_at = time.monotonic()
    assert set(store(node.port, study_files(second))) == {0}
    uid = study_uid(second)
    wait_for(lambda: pacs.reports(uid), 600, "the SR of a study sent after the disk was freed", interval=1.0)
    recovered_s = time.monotonic() - freed_at
    node.check_running()
    restarts = node.output().count("restarting it in")

    stop_s = node.stop()
    ready_before = node.worker_log().count(" ready.")
    node.start().wait_listening()  # a clean restart: nothing half-written stops it
    node.wait_worker_ready(after=ready_before)
    quarantined = sorted(p.name for p in (node.spool / "broker" / "quarantine").glob("*")) \
        if (node.spool / "broker" / "quarantine").is_dir() else []
    print(f"\nCHAOS disk-full: statuses while full {sorted(set(statuses))} ({len(statuses)} sent), node up "
          f"throughout ({time.monotonic() - full_at:.0f} s), worker restarts {restarts}; SR of the next study "
          f"{recovered_s:.0f} s after the space was freed; stop {stop_s:.1f} s; clean restart; "
          f"quarantined broker files {quarantined}")
    assert node.stop() < 10
    assert node.node_processes() == []
    if set(statuses) != {OUT_OF_RESOURCES}:  # the C-STORE handler's part (the listener's hardening, node/scp)
        pytest.xfail(f"a full disk is answered {[hex(s) for s in sorted(set(statuses))]}, not 0xA700: the "
                     "refusal's own audit row cannot be written (node/scp, hardened on another branch)")
