"""The durable outbox on a real SQLite ledger with a real receiving SCP; a fake clock, nothing sleeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.delivery.outbox import OutboxPolicy, deliver_pending, next_attempt_at
from node.delivery.scu import send_files
from node.errors import PacsUnavailableError
from node.ledger import deliveries as store
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination
from tests.delivery.conftest import make_file, make_job, sop_uid
from tests.support.net import free_port
from tests.support.scp import StoreSCP


def queue(repo: Repository, job_id: int, destination: Destination, path: Path, at: float = 100.0) -> None:
    """What the job layer does after processing: one pending row, ``path`` = the file's path."""
    repo.record_delivery(job_id, str(destination), sop_uid(path), DeliveryState.PENDING, at, path=str(path))


def states(repo: Repository) -> list[tuple[str, int]]:
    return [(d.state.value, d.attempts) for d in store.deliveries(repo)]


def test_backoff_is_exponential_and_capped() -> None:
    assert next_attempt_at(0, 100.0) == 100.0
    assert [next_attempt_at(n, 0.0) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]
    assert next_attempt_at(30, 0.0) == 3600.0
    assert next_attempt_at(10_000, 5.0, base_s=1, cap_s=60) == 65.0


def test_retried_with_backoff_until_the_peer_is_up(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    scp = scp_factory(start=False)  # its port is free: nothing listens yet
    job = make_job(repo)
    path = make_file(tmp_path / "results")
    queue(repo, job, scp.destination, path)

    first = deliver_pending(repo, 1000.0)
    assert [(o.state, o.attempts, o.next_attempt_at) for o in first] == [(DeliveryState.PENDING, 1, 1010.0)]
    assert first[0].error and "association" in first[0].error
    assert deliver_pending(repo, 1009.0) == []  # backing off
    second = deliver_pending(repo, 1010.0)
    assert [(o.state, o.attempts, o.next_attempt_at) for o in second] == [(DeliveryState.PENDING, 2, 1030.0)]

    scp.start()
    assert deliver_pending(repo, 1029.0) == []
    third = deliver_pending(repo, 1030.0)
    assert [(o.state, o.attempts) for o in third] == [(DeliveryState.SENT, 3)]
    assert scp.received == [sop_uid(path)]
    assert states(repo) == [("sent", 3)]
    assert deliver_pending(repo, 5000.0) == []  # sent once, never again
    events = [e.event for e in repo.audit_trail() if e.event.startswith("delivery")]
    assert events == ["delivery-pending", "delivery-retry", "delivery-retry", "delivery-sent"]


def test_dead_letter_after_max_attempts_then_resend(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    scp = scp_factory(start=False)
    job = make_job(repo)
    path = make_file(tmp_path / "results")
    queue(repo, job, scp.destination, path)
    policy = OutboxPolicy(max_attempts=3, base_s=5, cap_s=60)
    now = 0.0
    outcomes = []
    for _ in range(3):
        result = deliver_pending(repo, now, policy=policy)
        assert len(result) == 1
        outcomes.append(result[0])
        now = result[0].next_attempt_at or now
    assert [(o.state, o.attempts) for o in outcomes] == [
        (DeliveryState.PENDING, 1), (DeliveryState.PENDING, 2), (DeliveryState.FAILED, 3)]
    assert deliver_pending(repo, now + 1e6, policy=policy) == []  # dead letters are not retried
    dead = store.deliveries(repo, state=DeliveryState.FAILED)
    assert [(d.attempts, d.path) for d in dead] == [(3, path)]

    scp.start()
    assert store.resend(repo, now + 10, job_id=job) == 1
    assert states(repo) == [("pending", 0)]
    resent = deliver_pending(repo, now + 10, policy=policy)
    assert [(o.state, o.attempts) for o in resent] == [(DeliveryState.SENT, 1)]
    assert scp.received == [sop_uid(path)]
    assert store.resend(repo, now + 20) == 0  # nothing dead any more
    events = [e.event for e in repo.audit_trail() if e.event.startswith("delivery")]
    assert events.count("delivery-dead-letter") == 1 and events.count("delivery-resend") == 1


def test_permanent_refusal_and_missing_file_are_dead_at_once(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    scp = scp_factory(status=0x0122)
    job = make_job(repo)
    refused, gone = make_file(tmp_path / "r"), make_file(tmp_path / "r")
    queue(repo, job, scp.destination, refused)
    queue(repo, job, scp.destination, gone)
    gone.unlink()
    outcomes = deliver_pending(repo, 10.0)
    assert [(o.state, o.attempts, o.status) for o in outcomes] == [
        (DeliveryState.FAILED, 1, 0x0122), (DeliveryState.FAILED, 1, None)]
    assert outcomes[1].error and "no longer exists" in outcomes[1].error
    assert store.deliveries(repo, state=DeliveryState.FAILED)[0].last_status == 0x0122


def test_unavailable_destination_is_skipped_for_the_rest_of_the_pass(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    up = scp_factory()
    down = Destination("DOWN", "127.0.0.1", free_port())
    job = make_job(repo)
    files = [make_file(tmp_path / "r") for _ in range(3)]
    for path in files:
        queue(repo, job, down, path)
        queue(repo, job, up.destination, path)
    outcomes = deliver_pending(repo, 50.0)
    assert [(o.destination, o.state) for o in outcomes] == [
        (str(down), DeliveryState.PENDING), *[(str(up.destination), DeliveryState.SENT)] * 3]
    assert sorted(up.received) == sorted(sop_uid(p) for p in files)
    # the two untried rows to the down peer are still fresh (0 attempts): tried on the next pass
    assert sorted(states(repo)) == [("pending", 0), ("pending", 0), ("pending", 1), *[("sent", 1)] * 3]


def test_a_claimed_delivery_is_not_sent_twice(tmp_path: Path, repo: Repository) -> None:
    job = make_job(repo)
    queue(repo, job, Destination("PACS", "127.0.0.1", free_port()), make_file(tmp_path))
    (item,) = store.due(repo, 10.0, next_attempt_at)
    assert store.claim(repo, item, 10.0) is not None
    assert store.claim(repo, item, 10.0) is None  # a second worker with the same stale read loses
    sent: list[Path] = []
    assert deliver_pending(repo, 10.0, send=lambda paths, dest, **kw: sent.extend(paths)) == []  # backing off
    assert sent == []


def test_injected_sender_gets_the_policy(tmp_path: Path, repo: Repository) -> None:
    job = make_job(repo)
    path = make_file(tmp_path)
    queue(repo, job, Destination("PACS", "127.0.0.1", 104), path)
    calls: list[tuple[list[Path], str, dict[str, object]]] = []

    def fake_send(paths: list[Path], destination: Destination, **kwargs: object) -> None:
        calls.append((list(paths), str(destination), kwargs))
        raise PacsUnavailableError("down", status=0xA700)

    (outcome,) = deliver_pending(repo, 1.0, send=fake_send, policy=OutboxPolicy(calling_ae="NODE1", timeout_s=3))
    assert calls == [([path], "PACS@127.0.0.1:104", {"calling_ae": "NODE1", "timeout_s": 3})]
    assert (outcome.state, outcome.status) == (DeliveryState.PENDING, 0xA700)


def test_bad_policy_is_refused() -> None:
    from node.errors import ConfigError

    with pytest.raises(ConfigError):
        OutboxPolicy(max_attempts=0)


def test_real_sender_is_the_default() -> None:
    defaults = deliver_pending.__kwdefaults__
    assert defaults is not None and defaults["send"] is send_files
