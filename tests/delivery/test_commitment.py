"""Confirmed delivery: Storage Commitment against a pynetdicom stub PACS that commits, refuses to commit, answers on
the same or a new association, never answers, or does not support it at all."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.delivery.outbox import OutboxPolicy, deliver_pending
from node.ledger import deliveries as store
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination
from tests.delivery.commit_stub import CommitStub
from tests.delivery.conftest import make_file, make_job, sop_uid
from tests.support.net import free_port
from tests.support.scp import StoreSCP


@pytest.fixture
def stubs() -> Iterator[Callable[..., CommitStub]]:
    made: list[CommitStub] = []

    def factory(**kwargs: object) -> CommitStub:
        stub = CommitStub(free_port(), **kwargs)  # type: ignore[arg-type]
        made.append(stub)
        return stub.start()

    yield factory
    for stub in made:
        stub.stop()


def queue(repo: Repository, destination: Destination, path: Path) -> int:
    job = make_job(repo)
    repo.record_delivery(job, str(destination), sop_uid(path), DeliveryState.PENDING, 1.0, path=str(path))
    return job


def policy(destination: Destination, commitment_port: int = 0, **kwargs: object) -> OutboxPolicy:
    values: dict[str, object] = {"destinations": (destination,), "commitment_port": commitment_port,
                                 "commitment_address": "127.0.0.1", "timeout_s": 10, "commitment_timeout_s": 10}
    values.update(kwargs)
    return OutboxPolicy(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("reply", ["new", "same"])
def test_committed_on_a_new_or_the_same_association(
    tmp_path: Path, repo: Repository, stubs: Callable[..., CommitStub], reply: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node_port = free_port()
    stub = stubs(reply=reply, node_port=node_port)
    path = make_file(tmp_path / "r")
    queue(repo, stub.destination, path)
    started = time.monotonic()
    (outcome,) = deliver_pending(repo, 100.0, policy=policy(stub.destination, node_port if reply == "new" else 0))
    elapsed = time.monotonic() - started
    assert outcome.state is DeliveryState.COMMITTED, outcome
    assert stub.stored == [sop_uid(path)] and stub.reports_sent == [0]
    (action,) = stub.actions
    assert [r.ReferencedSOPInstanceUID for r in action.ReferencedSOPSequence] == [sop_uid(path)]
    (row,) = store.deliveries(repo)
    assert row.state is DeliveryState.COMMITTED and row.committed_at is not None
    assert row.commit_transaction_uid == action.TransactionUID
    assert elapsed < 5
    events = [e.event for e in repo.audit_trail() if e.event.startswith("delivery")]
    assert events == ["delivery-pending", "delivery-sent", "delivery-committed"]
    assert deliver_pending(repo, 10_000.0, policy=policy(stub.destination)) == []  # done: never sent again
    if reply == "new":  # ainode status says which results the PACS committed
        from node.cli import main

        assert main(["status", "--database", repo.ledger.url]) == 0
        assert "committed  attempts 1  last status 0x0000  storage commitment: committed 1970-01-01" in \
            capsys.readouterr().out


def test_refused_commitment_is_retried_then_commit_failed(
    tmp_path: Path, repo: Repository, stubs: Callable[..., CommitStub]
) -> None:
    node_port = free_port()
    stub = stubs(commit=False, node_port=node_port)
    path = make_file(tmp_path / "r")
    job = queue(repo, stub.destination, path)
    rules = policy(stub.destination, node_port, base_s=5, dead_letter_after_s=8)
    (first,) = deliver_pending(repo, 100.0, policy=rules)
    assert first.state is DeliveryState.PENDING  # will be sent again and asked again
    assert first.next_attempt_at == pytest.approx(105.0, abs=2)  # 5 s after the (wall-clock) wait for the answer
    assert first.error and "did not commit the object: 0x0110 processing failure" in first.error
    (second,) = deliver_pending(repo, first.next_attempt_at or 0.0, policy=rules)
    assert second.state is DeliveryState.PENDING and second.next_attempt_at == 108.0  # capped at the delay
    (third,) = deliver_pending(repo, 108.0, policy=rules)
    assert third.state is DeliveryState.COMMIT_FAILED  # stored three times, never committed: a dead letter
    assert stub.stored == [sop_uid(path)] * 3 and len(stub.actions) == 3
    (row,) = store.deliveries(repo)
    assert row.state is DeliveryState.COMMIT_FAILED and row.last_error and "0x0110" in row.last_error
    assert store.resend(repo, 200.0, job_id=job) == 1  # ainode resend takes commit-failed dead letters too
    assert store.deliveries(repo)[0].state is DeliveryState.PENDING


def test_no_answer_counts_as_a_failed_attempt(
    tmp_path: Path, repo: Repository, stubs: Callable[..., CommitStub]
) -> None:
    stub = stubs(reply="none")
    queue(repo, stub.destination, make_file(tmp_path / "r"))
    (outcome,) = deliver_pending(repo, 100.0, policy=policy(stub.destination, commitment_timeout_s=0.5))
    assert outcome.state is DeliveryState.PENDING
    assert outcome.error == f"no storage commitment result from {stub.destination} within 0.5 s"


def test_a_wait_cut_short_by_a_dead_worker_expires_on_the_next_pass(
    tmp_path: Path, repo: Repository, stubs: Callable[..., CommitStub]
) -> None:
    stub = stubs(reply="none")
    path = make_file(tmp_path / "r")
    queue(repo, stub.destination, path)
    (item,) = store.due(repo, 100.0, lambda n, t: t)
    claimed = store.claim(repo, item, 100.0)
    assert claimed is not None
    store.mark_sent(repo, claimed, 100.0, transaction_uid="1.2.3.4.5")  # then the worker was killed
    rules = policy(stub.destination, commitment_timeout_s=30, base_s=10)
    assert deliver_pending(repo, 120.0, policy=rules) == []  # still within the wait
    (expired,) = deliver_pending(repo, 131.0, policy=rules)
    assert expired.state is DeliveryState.PENDING and expired.error and "within 30 s" in expired.error
    (resent,) = deliver_pending(repo, expired.next_attempt_at or 0, policy=policy(stub.destination,
                                                                                   commitment_timeout_s=0.3))
    assert stub.stored == [sop_uid(path)] and resent.attempts == 2


def test_pacs_without_storage_commitment_is_commit_failed_at_once(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    scp = scp_factory()  # stores, but offers no Storage Commitment
    destination = Destination(scp.ae_title, "127.0.0.1", scp.port, commitment=True)
    path = make_file(tmp_path / "r")
    queue(repo, destination, path)
    (outcome,) = deliver_pending(repo, 100.0, policy=policy(destination))
    assert outcome.state is DeliveryState.COMMIT_FAILED
    assert outcome.error and "does not accept Storage Commitment" in outcome.error
    assert scp.received == [sop_uid(path)]  # stored, but the PACS never said it keeps it
