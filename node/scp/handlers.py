"""One ``handle_<event>`` per pynetdicom event; collaborators arrive as the :class:`ListenerContext` argument.

``handle_store`` does only what must happen before the answer: take the refusal noted while receiving (size,
disk), check the dataset and every value (:func:`node.scp.header.read_header`), refuse what cannot be kept, link
the received file durably into place, answer; a new instance's ledger rows follow in the group commit
(:mod:`node.scp.recorder`), any other instance is recorded before the answer. Completeness and processing happen
elsewhere (:mod:`node.jobs.completeness`, the job layer). Every refusal is audited with its reason; when the
audit row itself cannot be written (a full disk), the refusal is logged and answered all the same. An
unexpected exception in a handler is answered by pynetdicom with 0xC211 and affects only that one request.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError

from node.config import DuplicatePolicy
from node.errors import CorruptInstanceError, NodeError
from node.ledger.intake import InstanceConflictError
from node.ledger.records import SpooledInstance
from node.ledger.repository import InstanceHeader, Repository
from node.scp.arrivals import Arrivals, on_association_end
from node.scp.header import Limits, read_header
from node.scp.receive import DISK_FULL, Received, Refusal, SpillBuffer
from node.scp.recorder import IntakeRecorder
from node.scp.source import LimitExceededError
from node.scp.status import EchoStatus, StoreStatus
from node.spool import Spool, StoredFile

logger = logging.getLogger(__name__)

_UIDS = re.compile(r"\b[0-9]+(?:\.[0-9]+){3,}\b")  # UIDs in a refusal's reason: kept in the audit row, not logged


@dataclass(frozen=True)
class ListenerContext:
    """What the handlers need; built once by :func:`node.scp.server.start_listener`."""

    spool: Spool
    repository: Repository
    min_free_disk_bytes: int
    duplicate_policy: DuplicatePolicy
    clock: Callable[[], float]
    limits: Limits
    arrivals: Arrivals | None = None  # the studies each open association stores into (node.scp.arrivals)
    recorder: IntakeRecorder | None = None  # group commit of new instances; None: one transaction per instance


class LedgerBehindError(NodeError):
    """The group commit cannot write to the ledger: new instances are refused until it can."""


def _key(uid: str) -> str:
    """A UID as logs show it: the start of its SHA-256 (raw UIDs stay out of logs; the audit trail has them)."""
    return hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:12]


def requestor(assoc: Association) -> tuple[str, str]:
    """The calling AE title and the peer's address:port of an association."""
    peer = assoc.requestor
    return str(peer.ae_title).strip(), f"{peer.address}:{peer.port}"


def audit_quietly(
    repository: Repository, event: str, at: float, *, calling_ae_title: str | None = None, peer: str | None = None,
    study_instance_uid: str | None = None, sop_instance_uid: str | None = None, status: int | None = None,
    detail: str | None = None,
) -> None:
    """Append an audit event; a ledger that cannot take it (full disk, database down) is logged, not raised."""
    try:
        repository.audit(event, at, calling_ae_title=calling_ae_title, peer=peer,
                         study_instance_uid=study_instance_uid, sop_instance_uid=sop_instance_uid, status=status,
                         detail=detail)
    except SQLAlchemyError as exc:
        logger.error("audit event %s could not be written: %s", event, exc.__class__.__name__)


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error says the disk is full (SQLite SQLITE_FULL, PostgreSQL 53100 disk_full)."""
    original = getattr(exc, "orig", exc)
    if getattr(original, "sqlite_errorname", None) == "SQLITE_FULL" or getattr(original, "sqlstate", None) == "53100":
        return True
    return "database or disk is full" in str(original) or "No space left on device" in str(original)


def handle_echo(event: Event, ctx: ListenerContext) -> int:
    calling, peer = requestor(event.assoc)
    audit_quietly(ctx.repository, "echo", ctx.clock(), calling_ae_title=calling, peer=peer, status=EchoStatus.SUCCESS)
    return EchoStatus.SUCCESS


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE request as the handler needs it, from pynetdicom's event or from :mod:`node.scp.lane`."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    assoc: Association
    calling: str  # the calling AE title
    peer: str  # address:port


def handle_store(event: Event, ctx: ListenerContext) -> int:
    """pynetdicom's EVT_C_STORE: :func:`store` with the request taken from the event."""
    request = cast(C_STORE, event.request)
    calling, peer = requestor(event.assoc)
    return store(ctx, StoreRequest(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                                   str(event.context.transfer_syntax), event.assoc, calling, peer), request.DataSet)


def store(ctx: ListenerContext, request: StoreRequest, spill: object) -> int:
    """Check, spool durably, record, answer; every refusal is audited with the status returned. The received
    file is removed afterwards unless it was moved into place."""
    now = ctx.clock()
    calling, peer, sop_uid = request.calling, request.peer, request.sop_instance_uid

    def refuse(status: StoreStatus, why: str, event_name: str = "store-refused", study: str | None = None) -> int:
        logger.warning("C-STORE of instance %s from %s (%s) refused 0x%04X: %s", _key(sop_uid), calling, peer,
                       status, _UIDS.sub("<uid>", why))
        audit_quietly(ctx.repository, event_name, now, calling_ae_title=calling, peer=peer,
                      sop_instance_uid=sop_uid, study_instance_uid=study, status=status, detail=why)
        return status

    if not isinstance(spill, SpillBuffer):  # the association was not built by node.scp.transport
        return refuse(StoreStatus.PROCESSING_FAILURE, "the dataset was not received into the spool")
    try:
        return _handle(request, ctx, spill, refuse, now)
    finally:
        spill.discard()  # unless moved into place


def _handle(request: StoreRequest, ctx: ListenerContext, spill: SpillBuffer, refuse: Callable[..., int],
            now: float) -> int:
    calling, peer = request.calling, request.peer
    try:
        received = spill.finish()
    except OSError as exc:
        status = StoreStatus.OUT_OF_RESOURCES if exc.errno in DISK_FULL else StoreStatus.PROCESSING_FAILURE
        return refuse(status, f"receiving into the spool failed: {exc.strerror or exc}")
    if isinstance(received, Refusal):
        name = "store-rejected" if received.status == StoreStatus.CANNOT_UNDERSTAND else "store-refused"
        return refuse(received.status, received.reason, name)
    try:
        header = read_header(received.path, received.offset, request.transfer_syntax, request.sop_class_uid,
                             request.sop_instance_uid, ctx.limits, head=received.head, size=received.size)
    except LimitExceededError as exc:
        return refuse(StoreStatus.LIMIT_EXCEEDED, exc.message)
    except CorruptInstanceError as exc:
        return refuse(StoreStatus.CANNOT_UNDERSTAND, exc.message, "store-rejected")
    # free disk after this file: measured when its first bytes arrived, less what was written since (one statfs
    # per instance, not two); measured now when receiving never did (an empty dataset)
    free = received.free_bytes if received.free_bytes is not None else ctx.spool.free_bytes()
    if free < ctx.min_free_disk_bytes:
        return refuse(StoreStatus.OUT_OF_RESOURCES,
                      f"free disk in the spool ({free} bytes) is below min_free_disk_bytes ({ctx.min_free_disk_bytes})")
    if ctx.arrivals is not None:  # before the instance is recorded: the study never looks finished meanwhile
        ctx.arrivals.stored(request.assoc, header.study_instance_uid, calling)
    try:
        return _store(ctx, header, spill, received, calling, peer, now)
    except InstanceConflictError as exc:
        return refuse(StoreStatus.UID_CONFLICT, f"{exc.message}; stored in study {exc.study_instance_uid}",
                      "store-rejected", study=header.study_instance_uid)
    except OSError as exc:
        status = StoreStatus.OUT_OF_RESOURCES if exc.errno in DISK_FULL else StoreStatus.PROCESSING_FAILURE
        return refuse(status, f"spool write failed: {exc.strerror or exc}")
    except LedgerBehindError as exc:  # the group commit is failing: acknowledge nothing more until it recovers
        return refuse(StoreStatus.PROCESSING_FAILURE, exc.message)
    except SQLAlchemyError as exc:  # not recorded = not acknowledged: the sender keeps it and resends
        if is_disk_full(exc):
            return refuse(StoreStatus.OUT_OF_RESOURCES, "the ledger cannot grow: the disk is full")
        logger.error("ledger unavailable for an instance from %s: %s", calling, exc.__class__.__name__)
        return StoreStatus.PROCESSING_FAILURE


def _store(ctx: ListenerContext, header: InstanceHeader, spill: SpillBuffer, received: Received, calling: str,
           peer: str, now: float) -> int:
    """Apply the duplicate policy, link the file into place and record it in one ledger transaction.

    A file placed by this request whose transaction then fails (for whatever reason) is removed again: the
    sender gets no Success and resends it, and no unrecorded file stays in a study folder.
    """
    new_path = ctx.spool.relative_path(header.study_instance_uid, header.series_instance_uid,
                                       header.sop_instance_uid)
    recorder = ctx.recorder
    if recorder is not None:
        recorder.settle(header.sop_instance_uid)
        if ctx.repository.is_plainly_new(header):  # the fast path: no duplicate, no conflict
            if recorder.failing:
                raise LedgerBehindError("the ledger cannot record instances at the moment")
            # a second name in place; the .incoming one, durable since the fsync, goes after the commit (a racing
            # copy there already, or no hard links: renamed over it, its folder fsynced)
            stored, moved = ctx.spool.link_or_adopt(new_path, received.path, received.size, received.sha256,
                                                    over_existing=True)
            spill.moved()
            recorder.submit(SpooledInstance(header, stored.relative_path, stored.size, stored.sha256,
                                            calling_ae_title=calling, peer=peer, at=now),
                            None if moved else received.path)
            return StoreStatus.SUCCESS  # durable in the spool; the rows follow in the writer's next batch
    existed: dict[str, bool] = {}  # path -> was there before our first write (a retried transaction rewrites)

    def write(relative: str) -> StoredFile:
        existed.setdefault(relative, ctx.spool.path(relative).exists())
        return ctx.spool.place(relative, received.path, received.size, received.sha256)

    try:
        ctx.repository.receive_instance(
            header, sha256=received.sha256, duplicate_policy=ctx.duplicate_policy, new_path=new_path, write=write,
            calling_ae_title=calling, peer=peer, at=now, present=lambda relative: ctx.spool.path(relative).is_file(),
        )
    except BaseException:
        for relative, was_there in existed.items():
            if not was_there:
                ctx.spool.remove(relative)
        raise
    return StoreStatus.SUCCESS


def association_ended(ctx: ListenerContext) -> None:
    """What must happen before any other release / abort handler runs: every instance this process acknowledged
    is committed to the ledger (the group commit flushed), so what follows (the completeness check) sees them."""
    if ctx.recorder is not None and not ctx.recorder.flush(timeout_s=60.0):
        logger.error("the ledger did not take the acknowledged instances within 60 s of an association's end")


def handle_rejected(event: Event, ctx: ListenerContext) -> None:
    """Audit an association the node refused, with the reason (:mod:`node.scp.transport` notes it)."""
    calling, peer = requestor(event.assoc)
    reason = getattr(event.assoc.acse, "rejection_reason", None)
    logger.warning("association from %s (%s) rejected: %s", calling, peer, reason)
    audit_quietly(ctx.repository, "association-rejected", ctx.clock(), calling_ae_title=calling, peer=peer,
                  detail=reason)


def handle_aborted(event: Event, ctx: ListenerContext) -> None:
    """Audit an aborted association (instances already answered Success stay stored), with the reason if known;
    its instances are committed (:func:`association_ended`), then its studies are judged
    (:func:`node.scp.arrivals.on_association_end`)."""
    association_ended(ctx)
    calling, peer = requestor(event.assoc)
    reason = getattr(event.assoc.dul.socket, "violation", None)
    audit_quietly(ctx.repository, "association-aborted", ctx.clock(), calling_ae_title=calling, peer=peer,
                  detail=reason)
    on_association_end(ctx.arrivals, event.assoc)


def handle_released(event: Event, ctx: ListenerContext) -> None:
    """The association was released: its instances are committed to the ledger (:func:`association_ended`), then
    its studies are judged after ``settle_s``."""
    association_ended(ctx)
    on_association_end(ctx.arrivals, event.assoc)


def handle_closed(event: Event, ctx: ListenerContext) -> None:
    """The connection closed (also after a network timeout, without release or abort): as :func:`handle_released`;
    an association already ended is not handled twice."""
    association_ended(ctx)
    on_association_end(ctx.arrivals, event.assoc)
