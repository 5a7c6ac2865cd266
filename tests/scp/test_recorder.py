"""The ledger writer of a listener process (node.scp.recorder.IntakeRecorder) against a real SQLite ledger: a batch
is committed when its window ends or when it is full, without a wake-up per instance; a resend waits for the
earlier copy's rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.ledger.db import Ledger
from node.ledger.records import SpooledInstance
from node.ledger.repository import Repository
from node.scp.recorder import IntakeRecorder
from node.spool import Spool
from tests.ledger.test_repository import header


def _item(number: int) -> SpooledInstance:
    sop = f"1.2.3.4.1.{number}"
    return SpooledInstance(header("1.2.3.4.1", sop, "1.2.3.4"), f"s/{sop}.dcm", 10, f"{number:064d}",
                           calling_ae_title="PACS", peer="127.0.0.1:1", at=float(number))


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield Repository(ledger)
    ledger.dispose()


def _recorded(repository: Repository) -> int:
    snapshot = repository.study("1.2.3.4")
    return 0 if snapshot is None else snapshot.instance_count


def _wait_recorded(repository: Repository, count: int, timeout_s: float) -> float:
    started = time.monotonic()
    while _recorded(repository) < count:
        assert time.monotonic() - started < timeout_s, f"{_recorded(repository)} of {count} recorded"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_batch_is_committed_when_its_window_ends(repository: Repository, tmp_path: Path) -> None:
    recorder = IntakeRecorder(repository, Spool(tmp_path / "spool"), max_batch=100, max_delay_s=0.3)
    try:
        started = time.monotonic()  # the window opens when the writer sees the first item: after this
        for number in range(3):
            recorder.submit(_item(number))
        assert _recorded(repository) == 0  # inside the window
        _wait_recorded(repository, 3, timeout_s=10)
        assert time.monotonic() - started >= 0.3  # measured from the first submit (a loaded machine delays the look)
        assert recorder.pending == 0
    finally:
        recorder.close()


def test_a_full_batch_is_committed_before_its_window_ends(repository: Repository, tmp_path: Path) -> None:
    recorder = IntakeRecorder(repository, Spool(tmp_path / "spool"), max_batch=4, max_delay_s=30.0)
    try:
        for number in range(4):
            recorder.submit(_item(number))
        assert _wait_recorded(repository, 4, timeout_s=10) < 5
    finally:
        recorder.close()


def test_instances_do_not_wake_the_writer_one_by_one(repository: Repository, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: every submit notified the writer (a thread switch per instance at the listener's rate)."""
    recorder = IntakeRecorder(repository, Spool(tmp_path / "spool"), max_batch=1000, max_delay_s=0.5)
    notified = 0
    notify_all = threading.Condition.notify_all

    def counting(condition: threading.Condition) -> None:
        nonlocal notified
        notified += 1
        notify_all(condition)

    try:
        monkeypatch.setattr(recorder._cond, "notify_all", counting.__get__(recorder._cond))
        for number in range(50):
            recorder.submit(_item(number))
        assert notified == 1  # the first instance of the batch only
        _wait_recorded(repository, 50, timeout_s=10)
    finally:
        recorder.close()


def test_a_resend_waits_for_the_first_copys_rows(repository: Repository, tmp_path: Path) -> None:
    recorder = IntakeRecorder(repository, Spool(tmp_path / "spool"), max_batch=100, max_delay_s=30.0)
    try:
        recorder.submit(_item(1))
        started = time.monotonic()
        recorder.settle("1.2.3.4.1.1", timeout_s=20)  # asks for the flush, then waits for the commit
        assert time.monotonic() - started < 10
        assert _recorded(repository) == 1
        recorder.settle("1.2.3.4.1.9", timeout_s=20)  # never submitted: returns at once
    finally:
        recorder.close()
