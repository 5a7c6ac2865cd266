"""The worker's lease heartbeat and the prefork pool: no pool process is forked while the heartbeat thread is
inside the ledger. A child forked while that thread held one of SQLite's or SQLAlchemy's locks inherits the lock
taken and hangs at its first ledger call (seen in CI: a job "received" by the worker that never started)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from node.jobs import recovery
from node.ledger import leases


def test_a_fork_waits_for_the_beat_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_renew(repo: Any, held: Iterable[str], now: float) -> int:
        entered.set()
        release.wait(10)
        return 0

    monkeypatch.setattr(leases, "renew_leases", slow_renew)
    heartbeat = recovery.Heartbeat(repo=None, held=lambda: ["task-1"], interval_s=60).start()  # type: ignore[arg-type]
    forked_at: list[float] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # the child: nothing to do
            os._exit(0)
        forked_at.append(time.monotonic())
        os.waitpid(pid, 0)

    try:
        assert entered.wait(10), "the heartbeat did not beat"
        forker = threading.Thread(target=fork)
        forker.start()
        forker.join(0.5)
        assert not forked_at, "a fork went ahead while the heartbeat was inside the ledger"
        released = time.monotonic()
        release.set()
        forker.join(10)
        assert forked_at and forked_at[0] >= released
    finally:
        release.set()
        heartbeat.stop()


def test_after_a_fork_the_parent_and_the_child_can_beat_again(monkeypatch: pytest.MonkeyPatch) -> None:
    beats: list[float] = []

    def renew(repo: Any, held: Iterable[str], now: float) -> int:
        beats.append(now)
        return 0

    monkeypatch.setattr(leases, "renew_leases", renew)
    heartbeat = recovery.Heartbeat(repo=None, held=lambda: [], interval_s=0.05).start()  # type: ignore[arg-type]
    try:
        pid = os.fork()
        if pid == 0:  # the child's copy of the lock was released after the fork: taking it must not block
            os._exit(0 if heartbeat._in_ledger.acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        count = len(beats)
        deadline = time.monotonic() + 5
        while len(beats) < count + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(beats) >= count + 2, "the parent's heartbeat stopped after the fork"
    finally:
        heartbeat.stop()
