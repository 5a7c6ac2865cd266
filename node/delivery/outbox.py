"""The durable outbox: send the due deliveries of the ledger, retry on a configurable schedule, dead-letter,
and (for destinations that ask for it) wait for the PACS's Storage Commitment.

:func:`deliver_pending` takes every ``pending`` delivery whose next attempt time has come, claims it (one attempt
counted, see :mod:`node.ledger.deliveries`), sends its file and records the outcome. Each destination is sent
with its own options (:class:`~node.values.Destination`: calling AE title, default the node's ``ae_title``; TLS
with its CA bundle / client certificate; Storage Commitment), looked up by address in the configured
destinations (:attr:`OutboxPolicy.destinations`):

* success -> ``sent``; with Storage Commitment the same association then sends the N-ACTION and the row waits
  (``sent``, ``commit_transaction_uid`` set) for the N-EVENT-REPORT, on that association or on the
  :class:`~node.delivery.commitment.CommitmentListener` started for the pass (``commitment_port``), at most
  ``commitment_timeout_s``: committed -> ``committed``; failures or no answer -> a failed attempt;
* :class:`~node.errors.PacsUnavailableError` (peer down, rejected or aborted association, temporary failure
  status) and failed commitments -> ``pending`` again, next attempt at :func:`next_attempt_at`
  (``retry_initial_s * 2**(attempts-1)``, at most ``retry_max_s``, never later than the dead-letter time);
  once ``dead_letter_after_s`` have passed since the series' first attempt -> dead letter ``failed`` (or
  ``commit-failed`` when the object was stored but never committed); the other deliveries to that destination
  wait for the next pass;
* :class:`~node.errors.DeliveryRefusedError` (no presentation context accepted, 0x0122 SOP class not supported,
  0x0124, 0xA9xx), a missing file or an unusable destination -> ``failed`` at once, with the reason; a PACS that
  stores the object but refuses Storage Commitment -> ``commit-failed`` at once.

The error text and the next attempt time are kept on the row (``ainode status``, the dashboard). Dead letters go
back with :func:`node.ledger.deliveries.resend`. The clock is the caller's ``now`` (tests use a fake one); only
the wait for a commitment result takes wall-clock time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pynetdicom import evt

from node.config import Settings
from node.delivery.commitment import (
    CommitmentListener,
    CommitmentResult,
    commitment_context,
    event_report_handler,
    failure_reason,
    new_transaction_uid,
    request_commitment,
)
from node.delivery.scu import associate, proposed_contexts, read_files, send_all, send_files
from node.errors import ConfigError, DeliveryRefusedError, PacsUnavailableError
from node.ledger import deliveries as store
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination, parse_destination

logger = logging.getLogger(__name__)

SendFn = Callable[..., None]  # (paths, destination, *, calling_ae, timeout_s) like send_files
#: While waiting for a commitment result: woken at once by a result taken in this process, and the ledger is read
#: at least this often (a result another worker's listener took is only seen there).
WAIT_STEP_S = 0.5
_results_arrived = threading.Condition()


@dataclass(frozen=True)
class OutboxPolicy:
    """How the outbox sends: the retry schedule, the dead-letter delay, timeouts and each destination's options."""

    max_attempts: int | None = None  # an attempt cap besides the dead-letter delay (None: the delay alone)
    base_s: float = 10.0  # first retry delay (delivery_retry_initial_s), doubling per attempt
    cap_s: float = 600.0  # longest delay between two attempts (delivery_retry_max_s)
    dead_letter_after_s: float = 86400.0  # since the first failed attempt of the series
    calling_ae: str = "AINODE"  # the node's ae_title: the calling AE of destinations that set none
    timeout_s: float = 30.0
    batch: int = 100  # deliveries looked at per call
    destinations: tuple[Destination, ...] = ()  # the configured ones, with their options
    commitment_port: int = 0  # 0: N-EVENT-REPORTs only on the N-ACTION's association
    commitment_address: str = "0.0.0.0"
    commitment_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if (self.max_attempts is not None and self.max_attempts < 1) or self.base_s <= 0 \
                or self.cap_s < self.base_s or self.batch < 1 or self.dead_letter_after_s < 0:
            raise ConfigError(f"invalid outbox policy {self!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxPolicy:
        return cls(base_s=settings.delivery_retry_initial_s, cap_s=settings.delivery_retry_max_s,
                   dead_letter_after_s=settings.delivery_dead_letter_after_s, calling_ae=settings.ae_title,
                   timeout_s=settings.delivery_timeout_s, destinations=settings.destinations,
                   commitment_port=settings.commitment_port, commitment_address=settings.bind_address,
                   commitment_timeout_s=settings.commitment_timeout_s)

    def destination(self, key: str) -> Destination:
        """The configured destination of a delivery row (its options), else the address alone (defaults)."""
        for d in self.destinations:
            if str(d) == key:
                return d
        return parse_destination(key, "delivery destination")

    def calling_ae_for(self, destination: Destination) -> str:
        return destination.calling_ae or self.calling_ae

    def retry_at(self, item: store.OutboxItem, now: float) -> float:
        at = next_attempt_at(item.attempts, now, self.base_s, self.cap_s)
        if item.first_attempt_at is not None:  # the last retry falls on the dead-letter time, not after it
            at = max(now, min(at, item.first_attempt_at + self.dead_letter_after_s))
        return at

    def gives_up(self, item: store.OutboxItem, now: float) -> bool:
        if self.max_attempts is not None and item.attempts >= self.max_attempts:
            return True
        return item.first_attempt_at is not None and now - item.first_attempt_at >= self.dead_letter_after_s


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did."""

    delivery_id: int
    job_id: int
    destination: str
    sop_instance_uid: str
    state: DeliveryState  # sent | committed | pending (will be retried) | failed | commit-failed (dead letters)
    attempts: int
    status: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None
    peer_down: bool = False  # the peer could not be reached / refused to store: skip it for the rest of the pass


def next_attempt_at(attempts: int, now: float, base_s: float = 10, cap_s: float = 3600) -> float:
    """When to try again after ``attempts`` failed attempts, the last one ending at ``now``."""
    if attempts <= 0:
        return now
    return now + min(cap_s, base_s * 2.0 ** min(attempts - 1, 62))


def _outcome(item: store.OutboxItem, state: DeliveryState, status: int | None, error: str | None = None,
             retry_at: float | None = None) -> DeliveryOutcome:
    return DeliveryOutcome(item.id, item.job_id, item.destination, item.sop_instance_uid, state, item.attempts,
                           status, error, retry_at)


def failed_attempt(repo: Repository, item: store.OutboxItem, now: float, status: int | None, error: str,
                   policy: OutboxPolicy, *, dead_state: DeliveryState = DeliveryState.FAILED,
                   only_if: DeliveryState | None = None) -> DeliveryOutcome:
    """A temporary failure: retried on the schedule, or a dead letter once the dead-letter delay has passed."""
    if policy.gives_up(item, now):
        store.mark_dead(repo, item, now, status, error, state=dead_state, only_if=only_if)
        logger.error("delivery %d dead-lettered (%s) after %d attempt(s): %s", item.id, dead_state.value,
                     item.attempts, error)
        return _outcome(item, dead_state, status, error)
    retry_at = policy.retry_at(item, now)
    store.mark_retry(repo, item, now, status, error, retry_at, only_if=only_if)
    logger.warning("delivery %d failed (attempt %d), retry in %.0f s: %s", item.id, item.attempts,
                   retry_at - now, error)
    return _outcome(item, DeliveryState.PENDING, status, error, retry_at)


def _refused(repo: Repository, item: store.OutboxItem, now: float, exc: DeliveryRefusedError, *,
             state: DeliveryState = DeliveryState.FAILED, only_if: DeliveryState | None = None) -> DeliveryOutcome:
    store.mark_dead(repo, item, now, exc.status, exc.message, state=state, only_if=only_if)
    logger.error("delivery %d refused permanently (%s): %s", item.id, state.value, exc.message)
    return _outcome(item, state, exc.status, exc.message)


def _attempt(
    repo: Repository, item: store.OutboxItem, destination: Destination, path: Path, now: float, send: SendFn,
    policy: OutboxPolicy,
) -> DeliveryOutcome:
    try:
        send([path], destination, calling_ae=policy.calling_ae_for(destination), timeout_s=policy.timeout_s)
    except PacsUnavailableError as exc:
        return replace(failed_attempt(repo, item, now, exc.status, exc.message, policy), peer_down=True)
    except DeliveryRefusedError as exc:
        return _refused(repo, item, now, exc)
    store.mark_sent(repo, item, now)
    return _outcome(item, DeliveryState.SENT, 0)


# -- Storage Commitment ----------------------------------------------------------------------------------------


def record_commitment(repo: Repository, result: CommitmentResult, now: float, policy: OutboxPolicy) -> int:
    """Apply a PACS's commitment result to the rows waiting on its transaction; returns how many changed.
    A failed or unmentioned instance counts as a failed attempt (sent again, or ``commit-failed``)."""
    changed = 0
    for item in store.awaiting_commitment(repo, transaction_uid=result.transaction_uid):
        if item.sop_instance_uid in result.committed:
            changed += store.mark_committed(repo, item, now)
            continue
        reason = result.failed.get(item.sop_instance_uid)
        error = (f"{item.destination} did not commit the object: {failure_reason(reason)}"
                 if item.sop_instance_uid in result.failed else
                 f"{item.destination}'s commitment result does not mention the object")
        failed_attempt(repo, item, now, reason, error, policy, dead_state=DeliveryState.COMMIT_FAILED,
                       only_if=DeliveryState.SENT)
        changed += 1
    if not changed:
        logger.info("storage commitment result %s matches no delivery waiting for one", result.transaction_uid)
    with _results_arrived:
        _results_arrived.notify_all()
    return changed


def expire_commitments(repo: Repository, now: float, policy: OutboxPolicy) -> list[DeliveryOutcome]:
    """Rows still waiting for a commitment result after ``commitment_timeout_s`` (the worker that waited died, or
    the report went elsewhere): failed attempts, so the object is sent and committed again."""
    return [
        failed_attempt(repo, item, now, None,
                       f"no storage commitment result from {item.destination} within "
                       f"{policy.commitment_timeout_s:g} s", policy,
                       dead_state=DeliveryState.COMMIT_FAILED, only_if=DeliveryState.SENT)
        for item in store.awaiting_commitment(repo, requested_before=now - policy.commitment_timeout_s)
    ]


def _current(repo: Repository, item: store.OutboxItem) -> store.OutboxItem | None:
    return next((i for i in store.deliveries(repo, job_id=item.job_id) if i.id == item.id), None)


def _attempt_with_commitment(
    repo: Repository, item: store.OutboxItem, destination: Destination, path: Path, now: float,
    policy: OutboxPolicy,
) -> DeliveryOutcome:
    """C-STORE, then N-ACTION on the same association, then wait for the result (same association or listener)."""
    started = time.monotonic()

    def clock() -> float:
        return now + (time.monotonic() - started)

    handler = event_report_handler(lambda result: record_commitment(repo, result, clock(), policy))
    try:
        files = read_files([path])
        assoc = associate(destination, [*proposed_contexts([ds for _, ds in files]), commitment_context()],
                          calling_ae=policy.calling_ae_for(destination), timeout_s=policy.timeout_s,
                          evt_handlers=[(evt.EVT_N_EVENT_REPORT, handler)])
    except PacsUnavailableError as exc:
        return replace(failed_attempt(repo, item, now, exc.status, exc.message, policy), peer_down=True)
    except DeliveryRefusedError as exc:
        return _refused(repo, item, now, exc)
    ds = files[0][1]
    try:
        try:
            send_all(assoc, files, destination)
        except PacsUnavailableError as exc:
            assoc.abort()
            return replace(failed_attempt(repo, item, now, exc.status, exc.message, policy), peer_down=True)
        except DeliveryRefusedError as exc:
            assoc.abort()
            return _refused(repo, item, now, exc)
        transaction = new_transaction_uid()
        store.mark_sent(repo, item, now, transaction_uid=transaction)  # before asking: a fast answer finds it
        sent = replace(item, state=DeliveryState.SENT, commit_transaction_uid=transaction)
        try:
            request_commitment(assoc, destination, transaction, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID))])
        except DeliveryRefusedError as exc:
            return _refused(repo, sent, clock(), exc, state=DeliveryState.COMMIT_FAILED,
                            only_if=DeliveryState.SENT)
        except PacsUnavailableError as exc:
            return failed_attempt(repo, sent, clock(), exc.status, exc.message, policy,
                                  dead_state=DeliveryState.COMMIT_FAILED, only_if=DeliveryState.SENT)
        deadline = started + policy.commitment_timeout_s
        while time.monotonic() < deadline and store.awaiting_commitment(repo, transaction_uid=transaction):
            with _results_arrived:
                _results_arrived.wait(timeout=min(WAIT_STEP_S, max(0.0, deadline - time.monotonic())))
    finally:
        if assoc.is_established:
            assoc.release()
    current = _current(repo, sent)
    if current is not None and current.awaiting_commitment and current.commit_transaction_uid == transaction:
        return failed_attempt(repo, sent, clock(), None,
                              f"no storage commitment result from {destination} within "
                              f"{policy.commitment_timeout_s:g} s", policy,
                              dead_state=DeliveryState.COMMIT_FAILED, only_if=DeliveryState.SENT)
    if current is None:
        return _outcome(sent, DeliveryState.SENT, 0)
    logger.info("delivery %d: %s after %.2f s", item.id, current.state.value, time.monotonic() - started)
    return _outcome(current, current.state, current.last_status, current.last_error, current.next_attempt_at)


def _listener(policy: OutboxPolicy, repo: Repository, now: float, due: Sequence[store.OutboxItem]) \
        -> CommitmentListener | None:
    if not policy.commitment_port or not any(policy.destination(i.destination).commitment for i in due
                                             if _unusable(i, policy) is None):
        return None
    started = time.monotonic()
    listener = CommitmentListener(policy.calling_ae, policy.commitment_address, policy.commitment_port,
                                  lambda result: record_commitment(repo, result, now + time.monotonic() - started,
                                                                   policy), policy.timeout_s)
    return listener if listener.start() else None


# -- the pass ----------------------------------------------------------------------------------------------------


def deliver_pending(
    repo: Repository, now: float, *, send: SendFn = send_files, policy: OutboxPolicy | None = None,
) -> list[DeliveryOutcome]:
    """Attempt every due delivery once (and expire commitment waits that ran out); returns one outcome per
    attempt (empty when nothing was due)."""
    policy = policy or OutboxPolicy()
    outcomes = expire_commitments(repo, now, policy)
    unavailable: set[str] = set()
    due = store.due(repo, now, lambda n, t: next_attempt_at(n, t, policy.base_s, policy.cap_s), policy.batch)
    listener = _listener(policy, repo, now, due)
    try:
        for item in due:
            if item.destination in unavailable:
                continue
            claimed = store.claim(repo, item, now)
            if claimed is None:
                continue  # another worker took it
            problem = _unusable(claimed, policy)
            if problem is not None:
                store.mark_dead(repo, claimed, now, None, problem)
                outcomes.append(_outcome(claimed, DeliveryState.FAILED, None, problem))
                continue
            assert claimed.path is not None
            destination = policy.destination(claimed.destination)
            if destination.commitment:
                outcome = _attempt_with_commitment(repo, claimed, destination, claimed.path, now, policy)
            else:
                outcome = _attempt(repo, claimed, destination, claimed.path, now, send, policy)
            if outcome.peer_down:
                unavailable.add(item.destination)
            outcomes.append(outcome)
    finally:
        if listener is not None:
            listener.stop()
    return outcomes


def _unusable(item: store.OutboxItem, policy: OutboxPolicy | None = None) -> str | None:
    """Why this delivery can never be sent as it is (missing file, bad destination), or ``None``."""
    if item.path is None or not item.path.is_file():
        return f"the result file {item.path} no longer exists"
    try:
        (policy or OutboxPolicy()).destination(item.destination)
    except ConfigError as exc:
        return exc.message
    return None


def summarise(outcomes: Sequence[DeliveryOutcome]) -> dict[str, int]:
    """Counts per resulting state (for logs and task results)."""
    counts = {s.value: 0 for s in DeliveryState}
    for o in outcomes:
        counts[o.state.value] += 1
    return counts
