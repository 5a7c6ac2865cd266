"""Ledger operations on a real database: SQLite (WAL) and PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from node.config import LateInstancePolicy
from node.ledger.db import Ledger, normalise_url
from node.ledger.repository import InstanceHeader, LedgerStateError, Repository, content_digest, idempotency_key
from node.ledger.states import DeliveryState, JobState, StudyState

STUDY = "1.2.3.4"


def header(series: str, sop: str, study: str = STUDY) -> InstanceHeader:
    return InstanceHeader(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="MR",
        series_description="t2_tse_tra", series_number=2, frame_of_reference_uid="1.2.3.9",
    )


def record(repo: Repository, series: str, sop: str, at: float, sha: str = "0" * 64) -> None:
    repo.record_instance(header(series, sop), path=f"s/{sop}.dcm", size_bytes=10, sha256=sha,
                         calling_ae_title="PACS", peer="127.0.0.1:1", at=at)


@pytest.fixture
def repo(ledger_url: str):
    ledger = Ledger.open(ledger_url)
    yield Repository(ledger)
    ledger.dispose()


def test_records_survive_reopening(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    record(Repository(ledger), "1.2.3.4.1", "1.2.3.4.1.1", 10.0)
    ledger.dispose()
    reopened = Ledger.open(ledger_url)
    try:
        snapshot = Repository(reopened).study(STUDY)
        assert snapshot is not None and snapshot.instance_count == 1
        assert snapshot.state is StudyState.RECEIVING and snapshot.first_received_at == 10.0
    finally:
        reopened.dispose()


def test_state_machine_guards_and_jobs(repo: Repository) -> None:
    record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 10.0)
    seen = repo.study(STUDY)
    assert seen is not None
    record(repo, "1.2.3.4.1", "1.2.3.4.1.2", 20.0)  # arrives after the snapshot was taken
    assert not repo.mark_ready(seen, 30.0)  # stale snapshot: no transition
    fresh = repo.study(STUDY)
    assert fresh is not None and repo.mark_ready(fresh, 90.0)
    assert not repo.mark_ready(fresh, 91.0)  # already ready: idempotent no-op
    with pytest.raises(LedgerStateError):
        repo.start_job(12345, 92.0)
    key = idempotency_key(STUDY, fresh.content_digest)
    job = repo.enqueue(STUDY, key, 92.0)
    assert job is not None and job.state is JobState.QUEUED and job.study_version == 1
    with pytest.raises(LedgerStateError):
        repo.enqueue(STUDY, key, 93.0)  # no longer ready
    with pytest.raises(LedgerStateError):
        repo.finish_job(job.id, 93.0, ok=True)  # not started
    repo.start_job(job.id, 94.0)
    assert repo.study(STUDY).state is StudyState.PROCESSING  # type: ignore[union-attr]
    done = repo.finish_job(job.id, 95.0, ok=False, reason="registration diverged")
    assert done.state is JobState.FAILED
    final = repo.study(STUDY)
    assert final is not None and final.state is StudyState.FAILED and final.reason == "registration diverged"
    events = [e.event for e in repo.audit_trail(STUDY)]
    assert events[:3] == ["study-opened", "stored", "stored"]
    assert events[-4:] == ["study-ready", "job-queued", "job-started", "job-failed"]


def test_same_content_key_is_deduplicated(repo: Repository) -> None:
    record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 10.0, sha="a" * 64)
    seen = repo.study(STUDY)
    assert seen is not None and repo.mark_ready(seen, 80.0)
    key = idempotency_key(STUDY, seen.content_digest)
    job = repo.enqueue(STUDY, key, 81.0)
    assert job is not None
    repo.start_job(job.id, 82.0)
    repo.finish_job(job.id, 83.0, ok=True)
    # a late replacement (rerun policy) whose content ends up identical to the processed version
    record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 200.0, sha="a" * 64)
    reopened = repo.study(STUDY)
    assert reopened is not None and reopened.version == 2 and reopened.state is StudyState.RECEIVING
    assert reopened.content_digest == seen.content_digest
    assert repo.mark_ready(reopened, 300.0)
    assert repo.enqueue(STUDY, idempotency_key(STUDY, reopened.content_digest), 301.0) is None
    assert repo.study(STUDY).state is StudyState.DONE  # type: ignore[union-attr]
    assert len(repo.jobs(STUDY)) == 1


def test_deliveries_count_attempts(repo: Repository) -> None:
    record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 10.0)
    seen = repo.study(STUDY)
    assert seen is not None and repo.mark_ready(seen, 80.0)
    job = repo.enqueue(STUDY, idempotency_key(STUDY, seen.content_digest), 81.0)
    assert job is not None
    pending = repo.record_delivery(job.id, "PACS@10.0.0.1:104", "1.2.3.4.99", DeliveryState.PENDING, 90.0)
    assert pending.attempts == 0
    repo.record_delivery(job.id, "PACS@10.0.0.1:104", "1.2.3.4.99", DeliveryState.FAILED, 91.0, status=0xA700)
    sent = repo.record_delivery(job.id, "PACS@10.0.0.1:104", "1.2.3.4.99", DeliveryState.SENT, 92.0, status=0)
    assert sent.attempts == 2 and sent.state is DeliveryState.SENT and sent.last_status == 0
    assert [e.event for e in repo.audit_trail(STUDY)][-3:] == ["delivery-pending", "delivery-failed", "delivery-sent"]


def test_concurrent_writers_one_study(repo: Repository) -> None:
    """Eight threads record instances of one new study at once: one study row, every instance kept."""
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(6):
                record(repo, f"1.2.3.4.{n % 2}", f"1.2.3.4.{n}.{i}", 10.0 + i)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    studies = repo.studies()
    assert len(studies) == 1 and studies[0].instance_count == 48 and len(studies[0].series) == 2


def test_late_policy_ignore_keeps_state(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    repo = Repository(ledger, LateInstancePolicy.IGNORE)
    try:
        record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 10.0)
        seen = repo.study(STUDY)
        assert seen is not None and repo.mark_failed(seen, 700.0, "deadline passed; no T2")
        outcome = repo.record_instance(header("1.2.3.4.2", "1.2.3.4.2.1"), path="x.dcm", size_bytes=1,
                                       sha256="b" * 64, calling_ae_title="PACS", peer="p", at=800.0)
        assert outcome.late and not outcome.reopened and outcome.study_state is StudyState.FAILED
    finally:
        ledger.dispose()


def test_content_digest_is_order_free() -> None:
    pairs = [("1.2.1", "a" * 64), ("1.2.2", "b" * 64)]
    assert content_digest(pairs) == content_digest(reversed(pairs))
    assert content_digest(pairs) != content_digest([("1.2.1", "a" * 64), ("1.2.2", "c" * 64)])


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url)
    try:
        with ledger.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        ledger.dispose()


def test_url_normalisation() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    from node.errors import ConfigError

    with pytest.raises(ConfigError):
        normalise_url("mysql://u@h/db")


def test_plainly_new_sees_every_commit_from_any_thread(repo: Repository) -> None:
    """The listener's per-instance lookup (``Ledger.read_row``: on SQLite its own autocommit connection) never
    answers from an old snapshot, and several association threads may ask at once."""
    first = header("1.2.3.1", "1.2.3.1.1")
    assert repo.is_plainly_new(first)
    record(repo, "1.2.3.1", "1.2.3.1.1", 1.0)
    assert not repo.is_plainly_new(first)  # recorded: a duplicate now
    assert not repo.is_plainly_new(header("1.2.3.1", "1.2.3.1.2", study="1.2.3.9"))  # series owned by another study
    assert repo.is_plainly_new(header("1.2.3.1", "1.2.3.1.2"))
    answers: list[bool] = []

    def ask() -> None:
        for n in range(50):
            answers.append(repo.is_plainly_new(header("1.2.3.1", f"1.2.3.1.{100 + n}")))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 200
    repo.ledger.dispose()
    assert not repo.is_plainly_new(first)  # works again after dispose (a new connection)
