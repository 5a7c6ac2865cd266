"""``ainode status`` / ``ainode resend`` against a real ledger holding a dead-letter delivery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main
from node.ledger import deliveries as store
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from tests.delivery.conftest import STUDY, make_job


@pytest.fixture
def ledger_with_dead_letter(tmp_path: Path) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger.open(url)
    repo = Repository(ledger)
    job = make_job(repo)
    for _ in range(3):
        repo.record_delivery(job, "PACS@127.0.0.1:11112", "1.2.3.4", DeliveryState.FAILED, 50.0, status=0xA700)
    ledger.dispose()
    return url, job


def test_status_lists_study_job_and_delivery(
    ledger_with_dead_letter: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    url, job = ledger_with_dead_letter
    assert main(["status", "--database", url]) == 0
    text = capsys.readouterr().out
    assert STUDY in text and f"job {job}" in text
    assert "PACS@127.0.0.1:11112  failed  attempts 3  last status 0xA700" in text

    assert main(["status", "--database", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["study_instance_uid"] == STUDY
    assert data[0]["deliveries"][0] | {"id": 0} == {
        "id": 0, "job": job, "destination": "PACS@127.0.0.1:11112", "state": "failed", "attempts": 3,
        "last_status": 0xA700, "last_error": None, "next_attempt": None, "storage_commitment": None,
    }


def test_status_shows_last_error_and_next_retry_of_a_pending_delivery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 12: not only "pending attempts N"."""
    from node.delivery.outbox import deliver_pending
    from tests.delivery.conftest import make_file, sop_uid
    from tests.support.net import free_port

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger.open(url)
    repo = Repository(ledger)
    job = make_job(repo)
    path = make_file(tmp_path / "r")
    down = f"PACS@127.0.0.1:{free_port()}"
    repo.record_delivery(job, down, sop_uid(path), DeliveryState.PENDING, 1.0, path=str(path))
    (outcome,) = deliver_pending(repo, 1_700_000_000.0)
    ledger.dispose()
    assert outcome.next_attempt_at == 1_700_000_010.0
    assert main(["status", "--database", url]) == 0
    text = capsys.readouterr().out
    assert f"-> {down}  pending  attempts 1  next retry 2023-11-14 22:13:30Z" in text
    assert f"last error: association with {down}" in text
    assert main(["status", "--database", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)[0]["deliveries"]
    assert row["next_attempt"] == "2023-11-14 22:13:30Z" and row["last_error"].startswith("association with")


def test_resend_requeues_the_dead_letter(
    ledger_with_dead_letter: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    url, job = ledger_with_dead_letter
    assert main(["resend", "--database", url, "--job", str(job)]) == 0
    assert "1 failed delivery re-queued" in capsys.readouterr().out
    ledger = Ledger.open(url)
    try:
        rows = store.deliveries(Repository(ledger))
    finally:
        ledger.dispose()
    assert [(r.state, r.attempts) for r in rows] == [(DeliveryState.PENDING, 0)]
    assert main(["resend", "--database", url]) == 0
    assert "0 failed deliveries re-queued" in capsys.readouterr().out


def test_status_without_a_ledger_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--spool-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no ledger at" in err and "nowhere" in err


def test_requeue_command_hands_a_stuck_job_to_the_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 7: a job left queued (its message never reached the broker) and one left processing (its
    worker killed) go back to the embedded broker of the spool; a done one is refused."""
    import time

    from node.jobs.recovery import queued_job_ids

    spool = tmp_path / "spool"
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger.open(url)
    repo = Repository(ledger)
    job = make_job(repo)  # queued at t=3 s (1970): long stuck
    ledger.dispose()
    common = ["--database", url, "--spool-dir", str(spool)]
    assert main(["requeue", *common, "--stuck"]) == 0
    assert f"job {job} ({STUDY}) re-queued and sent to the workers" in capsys.readouterr().out
    queue = spool / "broker" / "queue"
    assert queued_job_ids(queue) == {job}

    ledger = Ledger.open(url)
    repo = Repository(ledger)
    repo.start_job(job, time.time())  # a worker took it just now
    ledger.dispose()
    assert main(["requeue", *common, "--job", str(job)]) == 1  # it may still be running: refused
    assert "not stuck before" in capsys.readouterr().err
    assert main(["requeue", *common, "--job", str(job), "--force"]) == 0
    assert len(list(queue.glob("*.msg"))) == 2
    ledger = Ledger.open(url)
    repo = Repository(ledger)
    try:
        assert repo.job(job) is not None and repo.job(job).state.value == "queued"  # type: ignore[union-attr]
        repo.start_job(job, 10.0)
        repo.finish_job(job, 11.0, ok=True)
        events = [e for e in repo.audit_trail(STUDY) if e.event == "job-requeued"]
    finally:
        ledger.dispose()
    assert len(events) == 2 and "re-queued by cli:" in str(events[0].detail) and "(forced)" in str(events[1].detail)
    assert main(["requeue", *common, "--job", str(job), "--force"]) == 1
    assert "re-run the study instead" in capsys.readouterr().err
