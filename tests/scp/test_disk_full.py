"""A full disk: the answer is 0xA700 (even when the refusal's own audit row cannot be written), the listener stays
up, and nothing half-written stops the next start.

The realistic test runs ``python -m node.scp.server`` (twice, the first one killed with SIGKILL) in a private
mount namespace whose spool is a 4 MiB tmpfs, SQLite ledger included; it is skipped where unprivileged user
namespaces are not available.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from node.scp.status import StoreStatus
from tests.scp.fixtures import FakeClock, ListenerFactory, associate, send
from tests.support.studies import SynthCase

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_refusal_is_answered_even_when_its_audit_row_cannot_be_written(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase
) -> None:
    listener = start(sqlite_url, FakeClock(), min_free_disk_bytes=1 << 62)
    with listener.repository.ledger.engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))  # as a full disk fails every write
    assert send(listener.port, synth_case.t2[:3]) == [StoreStatus.OUT_OF_RESOURCES] * 3
    assoc = associate(listener.port)
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert list((listener.spool.root / ".incoming").iterdir()) == []


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or not Path("/proc/self/root").exists():
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _read_line(process: subprocess.Popen[str], prefix: str, timeout: float = 90) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the node exited before printing {prefix!r}")
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} within {timeout} s")


@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare with user + mount namespaces (tmpfs spool)")
def test_full_disk_gives_out_of_resources_and_a_clean_restart(synth_case: SynthCase, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    server = (f"{sys.executable} -m node.scp.server --port 0 --bind-address 127.0.0.1 --spool-dir {spool} "
              "--accepted-calling-aets PACS")
    script = (f"mount -t tmpfs -o size=4m tmpfs {spool} && echo SHELL $$ && "
              f"{{ {server} & echo FIRST $! ; wait $! ; {server} ; }}")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AINODE_MIN_FREE_DISK_BYTES": "0",
           "AINODE_LOG_VERBOSITY": "0"}
    process = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        shell = int(_read_line(process, "SHELL").split()[1])  # unshare execs the shell: shell == process.pid
        first = int(_read_line(process, "FIRST").split()[1])
        port = int(_read_line(process, "listening as").rsplit(":", 1)[1])
        inside = Path(f"/proc/{shell}/root") / spool.relative_to("/")  # the tmpfs, seen from outside
        filler = inside / "filler"
        free = shutil.disk_usage(inside).free
        filler.write_bytes(b"\x00" * max(free - 200_000, 0))  # leave ~200 kB: a few instances, then full
        statuses = send(port, list(synth_case.t2) + list(synth_case.t1ce))
        assert StoreStatus.OUT_OF_RESOURCES in statuses, statuses
        assert set(statuses) <= {StoreStatus.SUCCESS, StoreStatus.OUT_OF_RESOURCES}, statuses
        assoc = associate(port)  # still up
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()

        os.kill(first, signal.SIGKILL)  # a crash while the disk is full
        port = int(_read_line(process, "listening as").rsplit(":", 1)[1])  # the second start, disk still full
        assoc = associate(port)
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert send(port, synth_case.seg) == [StoreStatus.OUT_OF_RESOURCES]
        filler.unlink()  # space freed
        assert send(port, synth_case.seg + synth_case.t2) == [StoreStatus.SUCCESS] * (1 + len(synth_case.t2))
        assert [p.name for p in (inside / ".incoming").iterdir()] == []
    finally:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        for child in children.read_text().split() if children.exists() else []:  # the servers the shell started
            os.kill(int(child), signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
