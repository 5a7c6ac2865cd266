"""One ``handle_<event>`` per pynetdicom event; collaborators arrive as the :class:`ListenerContext` argument.

``handle_store`` does only what must happen before the answer: check the dataset, refuse what cannot be kept,
write the raw bytes durably, record them in the ledger, answer. Completeness and processing happen elsewhere
(:mod:`node.jobs.completeness`, the job layer). An unexpected exception in a handler is answered by
pynetdicom with 0xC211 and affects only that one request.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError

from node.config import DuplicatePolicy
from node.errors import CorruptInstanceError
from node.ledger.repository import InstanceHeader, Repository
from node.scp.header import read_header
from node.scp.status import EchoStatus, StoreStatus
from node.spool import Spool, StoredFile

logger = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class ListenerContext:
    """What the handlers need; built once by :func:`node.scp.server.start_listener`."""

    spool: Spool
    repository: Repository
    min_free_disk_bytes: int
    duplicate_policy: DuplicatePolicy
    clock: Callable[[], float]


def _requestor(event: Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"


def handle_echo(event: Event, ctx: ListenerContext) -> int:
    calling, peer = _requestor(event)
    ctx.repository.audit("echo", ctx.clock(), calling_ae_title=calling, peer=peer, status=EchoStatus.SUCCESS)
    return EchoStatus.SUCCESS


def handle_store(event: Event, ctx: ListenerContext) -> int:
    """Check, spool durably, record, answer; every refusal is audited with the status returned."""
    now = ctx.clock()
    calling, peer = _requestor(event)
    request = cast(C_STORE, event.request)
    sop_uid = str(request.AffectedSOPInstanceUID)

    def refuse(status: StoreStatus, why: str, event_name: str = "store-refused") -> int:
        logger.warning("C-STORE %s from %s (%s): %s (0x%04X)", sop_uid, calling, peer, why, status)
        ctx.repository.audit(event_name, now, calling_ae_title=calling, peer=peer, sop_instance_uid=sop_uid,
                             status=status, detail=why)
        return status

    data = event.encoded_dataset(include_meta=False)
    meta = event.file_meta
    try:
        header = read_header(data, str(meta.TransferSyntaxUID), str(request.AffectedSOPClassUID), sop_uid)
    except CorruptInstanceError as exc:
        return refuse(StoreStatus.CANNOT_UNDERSTAND, exc.message, "store-rejected")
    prefix = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    if ctx.spool.free_bytes() - len(prefix) - len(data) < ctx.min_free_disk_bytes:
        return refuse(StoreStatus.OUT_OF_RESOURCES, f"free disk below {ctx.min_free_disk_bytes} bytes")
    digest = hashlib.sha256(prefix)
    digest.update(data)
    try:
        return _store(ctx, header, (prefix, data), digest.hexdigest(), calling, peer, now)
    except OSError as exc:
        status = StoreStatus.OUT_OF_RESOURCES if exc.errno in _DISK_FULL else StoreStatus.PROCESSING_FAILURE
        return refuse(status, f"spool write failed: {exc.strerror}")
    except SQLAlchemyError as exc:  # not recorded = not acknowledged: the sender keeps it and resends
        logger.error("ledger unavailable for %s from %s: %s", sop_uid, calling, exc)
        return StoreStatus.PROCESSING_FAILURE


def _store(
    ctx: ListenerContext, header: InstanceHeader, chunks: tuple[bytes, bytes], sha256: str, calling: str, peer: str,
    now: float,
) -> int:
    """Apply the duplicate policy, write the file and record it in one ledger transaction.

    A new file whose transaction then fails is removed again (the sender gets no Success and resends it).
    """
    new_path = ctx.spool.relative_path(header.study_instance_uid, header.series_instance_uid,
                                       header.sop_instance_uid)
    existed: dict[str, bool] = {}  # path -> was there before our first write (a retried transaction rewrites)

    def write(relative: str) -> StoredFile:
        existed.setdefault(relative, ctx.spool.path(relative).exists())
        return ctx.spool.write(relative, chunks)

    try:
        ctx.repository.receive_instance(
            header, sha256=sha256, duplicate_policy=ctx.duplicate_policy, new_path=new_path, write=write,
            calling_ae_title=calling, peer=peer, at=now,
        )
    except SQLAlchemyError:
        for relative, was_there in existed.items():
            if not was_there:
                ctx.spool.remove(relative)
        raise
    return StoreStatus.SUCCESS


def handle_rejected(event: Event, ctx: ListenerContext) -> None:
    """Audit an association the node refused (unknown calling AE title, wrong called AE title...)."""
    calling, peer = _requestor(event)
    logger.warning("association from %s (%s) rejected", calling, peer)
    ctx.repository.audit("association-rejected", ctx.clock(), calling_ae_title=calling, peer=peer)


def handle_aborted(event: Event, ctx: ListenerContext) -> None:
    """Audit an aborted association (instances already answered Success stay stored)."""
    calling, peer = _requestor(event)
    ctx.repository.audit("association-aborted", ctx.clock(), calling_ae_title=calling, peer=peer)
