"""DICOM Storage Commitment Push Model (PS3.4 Annex J) as the SCU: ask a PACS to commit to keeping the objects
it stored, and take its answer.

* :func:`request_commitment` sends the N-ACTION (Action Type 1, "Request Storage Commitment") on an established
  association: a Transaction UID and the (SOP Class, SOP Instance) pairs to commit.
* The PACS answers later with an N-EVENT-REPORT (Event Type 1: all committed; 2: failures exist, each failed
  instance with its Failure Reason), either on the same association, if it is still open, or on a **new**
  association it opens to our AE as registered at the PACS (Orthanc does the latter: the node's calling AE must
  be in its ``DicomModalities`` with the host and ``commitment_port`` of the worker).
  :func:`event_report_handler` takes it on the N-ACTION's association; :class:`CommitmentListener` is the small
  SCP that takes it on a new one. Both hand a :class:`CommitmentResult` to a callback (the outbox records it in
  the ledger) and answer Success.

Nothing here touches the ledger: :mod:`node.delivery.outbox` wires the callback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from node.errors import DeliveryRefusedError, PacsUnavailableError
from node.values import Destination

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
#: The well-known SOP Instance of the Storage Commitment Push Model.
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_SUCCESS = 1  # N-EVENT-REPORT Event Type ID: Storage Commitment Request Successful
EVENT_FAILURES = 2  # ... Storage Commitment Request Complete - Failures Exist
VERIFICATION = UID("1.2.840.10008.1.1")

#: PS3.4 J.3.3 Failure Reasons, in words (for the ledger and ``ainode status``).
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


def failure_reason(code: int | None) -> str:
    if code is None:
        return "no failure reason given"
    return f"0x{code:04X} {FAILURE_REASONS.get(code, 'unknown failure reason')}"


@dataclass(frozen=True)
class CommitmentResult:
    """What the PACS answered for one transaction: the committed instances and the failed ones with reasons."""

    transaction_uid: str
    committed: frozenset[str]
    failed: dict[str, int | None] = field(default_factory=dict)


def new_transaction_uid() -> str:
    return str(generate_uid())


def commitment_context() -> PresentationContext:
    """The Storage Commitment Push Model context we propose (our role: SCU, the default)."""
    return build_context(STORAGE_COMMITMENT_PUSH)


def action_information(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION's Action Information: Transaction UID and the (SOP Class UID, SOP Instance UID) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def parse_event(event_type: int | None, info: Dataset | None) -> CommitmentResult:
    """A :class:`CommitmentResult` from an N-EVENT-REPORT's Event Type ID and Event Information."""
    if info is None or "TransactionUID" not in info:
        raise ValueError("the N-EVENT-REPORT carries no Transaction UID")
    committed = frozenset(str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", []))
    failed: dict[str, int | None] = {}
    for item in info.get("FailedSOPSequence", []):
        reason = item.get("FailureReason")
        failed[str(item.ReferencedSOPInstanceUID)] = None if reason is None else int(reason)
    if event_type == EVENT_SUCCESS and failed:
        logger.warning("storage commitment report of type 1 (success) lists failed instances; taken as failures")
    return CommitmentResult(str(info.TransactionUID), committed - failed.keys(), failed)


OnResult = Callable[[CommitmentResult], object]


def event_report_handler(on_result: OnResult) -> Callable[[Any], tuple[int, Dataset | None]]:
    """A pynetdicom ``EVT_N_EVENT_REPORT`` handler that passes each Storage Commitment result to ``on_result``."""

    def handle(event: Any) -> tuple[int, Dataset | None]:
        request = event.request
        if str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH:
            return 0x0122, None  # SOP class not supported
        try:
            result = parse_event(request.EventTypeID, event.event_information)
        except (ValueError, AttributeError, TypeError) as exc:
            logger.warning("unusable storage commitment report from %s: %s", event.assoc.requestor.ae_title, exc)
            return 0x0110, None
        try:
            on_result(result)
        except Exception:  # the PACS gets a failure status and may send it again
            logger.exception("storage commitment result %s could not be recorded", result.transaction_uid)
            return 0x0110, None
        logger.info("storage commitment report %s: %d committed, %d failed", result.transaction_uid,
                    len(result.committed), len(result.failed))
        return 0x0000, None

    return handle


def request_commitment(assoc: Association, destination: Destination, transaction_uid: str,
                       instances: Sequence[tuple[str, str]]) -> None:
    """Send the N-ACTION on ``assoc``. A peer that did not accept the Storage Commitment context, or answers
    "not supported", raises :class:`DeliveryRefusedError`; no or another failure response
    :class:`PacsUnavailableError`."""
    if not any(str(cx.abstract_syntax) == STORAGE_COMMITMENT_PUSH for cx in assoc.accepted_contexts):
        raise DeliveryRefusedError(f"{destination} does not accept Storage Commitment (the Storage Commitment Push "
                                   "Model context was rejected)", status=0x0122)
    status, _reply = assoc.send_n_action(action_information(transaction_uid, instances), REQUEST_COMMITMENT,
                                         STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
    code = getattr(status, "Status", None)
    if code is None:
        raise PacsUnavailableError(f"no N-ACTION response from {destination} (timeout, abort or invalid response)")
    if int(code) in (0x0122, 0x0123, 0x0112, 0x0119, 0x0124):  # not supported, no such action / instance...
        raise DeliveryRefusedError(f"{destination} refused the storage commitment request: status 0x{int(code):04X}",
                                   status=int(code))
    if int(code) != 0x0000:
        raise PacsUnavailableError(f"{destination} answered status 0x{int(code):04X} to the storage commitment "
                                   "request", status=int(code))


class CommitmentListener:
    """An SCP taking Storage Commitment N-EVENT-REPORTs on new associations (any called AE title), for as long as
    the outbox waits for them; ``start`` is False when the port is taken (another worker process listens there
    and records what arrives in the same ledger)."""

    def __init__(self, ae_title: str, address: str, port: int, on_result: OnResult, timeout_s: float = 30) -> None:
        self.ae_title, self.address, self.port = ae_title, address, port
        self.on_result = on_result
        self.timeout_s = timeout_s
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        ae.add_supported_context(VERIFICATION)
        ae.require_called_aet = False
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        try:
            self._server = ae.start_server((self.address, self.port), block=False,
                                           evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                                          event_report_handler(self._record))])
        except OSError as exc:
            logger.info("storage commitment listener not started on %s:%d (%s); another worker may hold it",
                        self.address, self.port, exc.strerror)
            return False
        logger.info("storage commitment listener on %s:%d", self.address, self.port)
        return True

    def _record(self, result: CommitmentResult) -> None:
        with self._lock:  # one result at a time into the ledger
            self.on_result(result)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> CommitmentListener:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
