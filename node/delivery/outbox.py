"""The durable outbox: send the due deliveries of the ledger, retry with exponential backoff, dead-letter.

:func:`deliver_pending` takes every ``pending`` delivery whose backoff has passed, claims it (one attempt
counted, see :mod:`node.ledger.deliveries`), sends its file with :func:`node.delivery.scu.send_files` and records
the outcome:

* success -> ``sent``;
* :class:`~node.delivery.scu.PacsUnavailableError` (peer down, failure status) -> stays ``pending``, next try at
  :func:`next_attempt_at` (``base_s * 2**(attempts-1)``, at most ``cap_s``), or ``failed`` (dead letter) once
  ``max_attempts`` attempts failed; the other deliveries to that destination wait for the next pass;
* :class:`~node.delivery.scu.DeliveryRefusedError` (permanent refusal), a missing file or an unusable
  destination -> ``failed`` at once.

Dead letters go back with :func:`node.ledger.deliveries.resend`. The clock is the caller's ``now`` (tests use a
fake one; nothing here sleeps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.delivery.scu import send_files
from node.errors import ConfigError, DeliveryRefusedError, PacsUnavailableError
from node.ledger import deliveries as store
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination, parse_destination

logger = logging.getLogger(__name__)

SendFn = Callable[..., None]  # (paths, destination, *, calling_ae, timeout_s) like send_files


@dataclass(frozen=True)
class OutboxPolicy:
    max_attempts: int = 8  # 10 s, 20 s, 40 s ... : ~21 min of retries with the defaults
    base_s: float = 10.0
    cap_s: float = 3600.0
    calling_ae: str = "AINODE"
    timeout_s: float = 30.0
    batch: int = 100  # deliveries looked at per call

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_s <= 0 or self.cap_s < self.base_s or self.batch < 1:
            raise ConfigError(f"invalid outbox policy {self!r}")


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did."""

    delivery_id: int
    job_id: int
    destination: str
    sop_instance_uid: str
    state: DeliveryState  # sent | pending (will be retried) | failed (dead letter)
    attempts: int
    status: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None


def next_attempt_at(attempts: int, now: float, base_s: float = 10, cap_s: float = 3600) -> float:
    """When to try again after ``attempts`` failed attempts, the last one ending at ``now``."""
    if attempts <= 0:
        return now
    return now + min(cap_s, base_s * 2.0 ** min(attempts - 1, 62))


def _outcome(item: store.OutboxItem, state: DeliveryState, status: int | None, error: str | None = None,
             retry_at: float | None = None) -> DeliveryOutcome:
    return DeliveryOutcome(item.id, item.job_id, item.destination, item.sop_instance_uid, state, item.attempts,
                           status, error, retry_at)


def _attempt(
    repo: Repository, item: store.OutboxItem, destination: Destination, path: Path, now: float, send: SendFn,
    policy: OutboxPolicy,
) -> DeliveryOutcome:
    try:
        send([path], destination, calling_ae=policy.calling_ae, timeout_s=policy.timeout_s)
    except PacsUnavailableError as exc:
        if item.attempts >= policy.max_attempts:
            store.mark_dead(repo, item, now, exc.status, exc.message)
            logger.error("delivery %d dead-lettered after %d attempts: %s", item.id, item.attempts, exc.message)
            return _outcome(item, DeliveryState.FAILED, exc.status, exc.message)
        store.mark_retry(repo, item, now, exc.status, exc.message)
        retry_at = next_attempt_at(item.attempts, now, policy.base_s, policy.cap_s)
        logger.warning("delivery %d failed (attempt %d), retry in %.0f s: %s", item.id, item.attempts,
                       retry_at - now, exc.message)
        return _outcome(item, DeliveryState.PENDING, exc.status, exc.message, retry_at)
    except DeliveryRefusedError as exc:
        store.mark_dead(repo, item, now, exc.status, exc.message)
        logger.error("delivery %d refused permanently: %s", item.id, exc.message)
        return _outcome(item, DeliveryState.FAILED, exc.status, exc.message)
    store.mark_sent(repo, item, now)
    return _outcome(item, DeliveryState.SENT, 0)


def deliver_pending(
    repo: Repository, now: float, *, send: SendFn = send_files, policy: OutboxPolicy | None = None,
) -> list[DeliveryOutcome]:
    """Attempt every due delivery once; returns one outcome per attempt (empty when nothing was due)."""
    policy = policy or OutboxPolicy()
    outcomes: list[DeliveryOutcome] = []
    unavailable: set[str] = set()
    for item in store.due(repo, now, lambda n, t: next_attempt_at(n, t, policy.base_s, policy.cap_s), policy.batch):
        if item.destination in unavailable:
            continue
        claimed = store.claim(repo, item, now)
        if claimed is None:
            continue  # another worker took it
        problem = _unusable(claimed)
        if problem is not None:
            store.mark_dead(repo, claimed, now, None, problem)
            outcomes.append(_outcome(claimed, DeliveryState.FAILED, None, problem))
            continue
        assert claimed.path is not None
        outcome = _attempt(repo, claimed, parse_destination(claimed.destination, "delivery destination"),
                           claimed.path, now, send, policy)
        if outcome.state is DeliveryState.PENDING:
            unavailable.add(item.destination)
        outcomes.append(outcome)
    return outcomes


def _unusable(item: store.OutboxItem) -> str | None:
    """Why this delivery can never be sent as it is (missing file, bad destination), or ``None``."""
    if item.path is None or not item.path.is_file():
        return f"the result file {item.path} no longer exists"
    try:
        parse_destination(item.destination, "delivery destination")
    except ConfigError as exc:
        return exc.message
    return None


def summarise(outcomes: Sequence[DeliveryOutcome]) -> dict[str, int]:
    """Counts per resulting state (for logs and task results)."""
    counts = {s.value: 0 for s in DeliveryState}
    for o in outcomes:
        counts[o.state.value] += 1
    return counts
