"""The listener's group commit (node/scp/recorder.py): Success once an instance is durable in the spool, its
ledger rows committed in batches. A listener process SIGKILLed after Success and before the batch commit loses
nothing: the next start records the spooled file."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from node.delivery.scu import wait_reactor_resumed
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from tests.scp.fixtures import associate, sop_instance_uid
from tests.support.studies import SynthCase

LISTENING = re.compile(r"listening as \S+ on [0-9.]+:(\d+)")


class ListenerProcess:
    """``python -m node.scp.server`` on a free port (it prints the port it bound)."""

    def __init__(self, spool: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
        env.update(AINODE_MIN_FREE_DISK_BYTES="0", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.scp.server", "--port", "0", "--bind-address", "127.0.0.1",
             "--spool-dir", str(spool), "--ae-title", "AINODE"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the listener prints it once it accepts associations
        found = LISTENING.search(line)
        if found is None:
            self.stop()
            raise AssertionError(f"the listener did not start: {line!r}")
        self.port = int(found.group(1))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[list[ListenerProcess]]:
    started: list[ListenerProcess] = []
    yield started
    for listener in started:
        listener.stop()


def _store_without_release(port: int, files: Sequence[Path]) -> list[int]:
    """C-STORE ``files`` and leave the association open (the listener is killed under it)."""
    assoc = associate(port)
    assert assoc.is_established
    statuses = []
    for path in files:
        wait_reactor_resumed(assoc)
        response = assoc.send_c_store(path)
        statuses.append(int(response.Status) if "Status" in response else -1)
    return statuses


def test_sigkill_after_success_before_the_batch_commit_loses_nothing(
    tmp_path: Path, synth_case: SynthCase, listeners: list[ListenerProcess],
) -> None:
    spool = tmp_path / "spool"
    first = ListenerProcess(spool)
    listeners.append(first)
    # hold the ledger's write lock: the listener's writer thread cannot commit, its reads (the handler's) go on
    blocker = sqlite3.connect(spool / "ledger.sqlite3", isolation_level=None, timeout=30)
    blocker.execute("BEGIN IMMEDIATE")
    files = list(synth_case.t2[:3])
    try:
        assert _store_without_release(first.port, files) == [0, 0, 0]  # acknowledged, rows not committed
        first.kill()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    ledger = Ledger.open(f"sqlite:///{spool / 'ledger.sqlite3'}")
    try:
        repository = Repository(ledger)
        unrecorded = all(repository.find_instance(sop_instance_uid(path)) is None for path in files)
        assert unrecorded, "committed before the kill"
        listeners.append(ListenerProcess(spool))  # the start-up reconciliation records the spooled files
        for path in files:
            known = repository.find_instance(sop_instance_uid(path))
            assert known is not None, "an acknowledged instance is missing from the ledger after the restart"
            assert hashlib.sha256((spool / known.path).read_bytes()).hexdigest() == known.sha256
        events = [e.event for e in repository.audit_trail()]
        assert events.count("instance-recovered") == len(files)
        assert not (spool / ".orphans").exists() or list((spool / ".orphans").iterdir()) == []
    finally:
        ledger.dispose()
