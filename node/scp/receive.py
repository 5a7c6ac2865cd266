"""Receiving a C-STORE's dataset straight into a file of the spool, with bounded memory and a size cap.

pynetdicom accumulates the P-DATA fragments of a message in ``DIMSEMessage.data_set`` (a ``BytesIO``, so the
whole dataset in memory). :class:`BoundedDIMSE` (installed on each association by
:mod:`node.scp.transport`) gives every message a :class:`SpillBuffer` instead: a ``BytesIO`` that stays empty and
writes each fragment to ``<spool>/.incoming/rx-*.part`` behind the Part-10 preamble and file meta built from the
request, hashing as it goes. Past ``max_instance_bytes``, or when free disk drops below ``min_free_disk_bytes``,
or when a write fails, the file is removed and later fragments are only counted: the refusal is noted on the
buffer, and the C-STORE handler answers it once the message is complete. Memory per association is at most
FLUSH_BYTES (256 KiB) plus one PDU, whatever the instance's size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import logging
import os
import re
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from node.scp.status import StoreStatus

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import DimsePrimitiveType

logger = logging.getLogger(__name__)

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
SPACE_CHECK_BYTES = 64 << 20  # free disk is checked at the first fragment and then every 64 MiB
HEAD_BYTES = 64 << 10  # the dataset's first bytes kept in memory: the header check reads them without the file
FLUSH_BYTES = 256 << 10  # received bytes gathered before they are written to the spill file
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SPILL_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_numbers = itertools.count()  # spill file names: rx-<pid>-<token>-<number>.part (what tempfile.mkstemp would
_name_prefix = f"rx-{os.getpid()}-{secrets.token_hex(3)}-"  # make, without its random names and Path objects)


def _new_name_prefix() -> None:
    global _name_prefix
    _name_prefix = f"rx-{os.getpid()}-{secrets.token_hex(3)}-"


os.register_at_fork(after_in_child=_new_name_prefix)


@dataclass(frozen=True)
class ReceiveLimits:
    """Where spill files go and when receiving stops keeping the data."""

    incoming: Path
    max_instance_bytes: int
    min_free_disk_bytes: int


@dataclass(frozen=True)
class Refusal:
    status: StoreStatus
    reason: str


@dataclass(frozen=True)
class Received:
    """A complete dataset on disk: the Part-10 file at ``path`` (dataset from ``offset``), its size and digest."""

    path: Path
    offset: int
    size: int  # the whole file
    sha256: str
    head: bytes = b""  # the dataset's first bytes (up to HEAD_BYTES), kept in memory as they arrived
    free_bytes: int | None = None  # free disk once this file was written, as last measured less what was written since


class SpillBuffer(io.BytesIO):
    """The ``data_set`` pynetdicom writes a message's dataset fragments to; see the module docstring.

    Fragments are gathered in ``scratch`` (the association's, reused from one message to the next, or the
    buffer's own) and written and hashed FLUSH_BYTES at a time: a PDU costs a copy, not a system call and a
    hash call of its own (each of which let another association's thread take the GIL)."""

    def __init__(self, limits: ReceiveLimits, prefix: Callable[[], bytes | Refusal],
                 scratch: bytearray | None = None) -> None:
        super().__init__()
        self._limits = limits
        self._prefix = prefix
        self._fd: int | None = None
        self._digest = hashlib.sha256()
        self._next_space_check = 0
        self._free_at_check = 0  # free disk measured at the last check, when the file held _checked_at bytes
        self._checked_at = 0
        self._on_disk = 0  # bytes written to the file
        self._pending = bytearray() if scratch is None else scratch
        self._fill = 0  # bytes of _pending not yet written
        self._head: bytes | None = None  # the dataset's first HEAD_BYTES, taken at the first write to the file
        self.path: Path | None = None
        self.offset = 0
        self.received = 0  # dataset bytes received, kept or not
        self.refusal: Refusal | None = None

    def write(self, data: ReadableBuffer) -> int:
        chunk = memoryview(data)
        size = len(chunk)
        self.received += size
        if self.refusal is not None:
            return size
        try:
            if self._fd is None:
                self._open()
            if self.received > self._limits.max_instance_bytes:
                self._refuse(StoreStatus.LIMIT_EXCEEDED,
                             f"the dataset is larger than max_instance_bytes ({self._limits.max_instance_bytes} bytes)")
            elif self.received >= self._next_space_check:
                self._check_space()
            if self._fd is not None and self.refusal is None:
                fill = self._fill
                try:
                    self._pending[fill:fill + size] = chunk
                except BufferError:  # a view of the shared scratch outlived its write (a kept traceback): let it be
                    self._pending = self._pending[:fill]
                    self._pending[fill:fill + size] = chunk
                self._fill = fill + size
                if self._fill >= FLUSH_BYTES:
                    self._drain()
        except OSError as exc:
            status = StoreStatus.OUT_OF_RESOURCES if exc.errno in DISK_FULL else StoreStatus.PROCESSING_FAILURE
            self._refuse(status, f"receiving into the spool failed: {exc.strerror or exc}")
        return size

    def _open(self) -> None:
        prefix = self._prefix()
        if isinstance(prefix, Refusal):
            self.refusal = prefix
            return
        incoming = os.fspath(self._limits.incoming)
        for _attempt in range(100):  # a name left by an earlier process of the same pid: the next number
            name = f"{incoming}/{_name_prefix}{next(_numbers)}.part"
            try:
                self._fd = os.open(name, _SPILL_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free spill file name", incoming)
        self.path = Path(name)
        # the prefix goes first into the gathering space: written with the dataset's first bytes, one write less
        self.offset = len(prefix)
        try:
            self._pending[:self.offset] = prefix
        except BufferError:  # as in write()
            self._pending = bytearray(prefix)
        self._fill = self.offset

    def _drain(self) -> None:
        """Write and hash what is gathered."""
        assert self._fd is not None
        with memoryview(self._pending) as whole, whole[:self._fill] as view:
            if self._head is None:  # the first drain: the prefix, then the dataset's first bytes
                self._head = bytes(view[self.offset:self.offset + HEAD_BYTES])
            self._digest.update(view)
            _write_all(self._fd, view)
        self._on_disk += self._fill
        self._fill = 0

    def _check_space(self) -> None:
        self._next_space_check = self.received + SPACE_CHECK_BYTES
        stat = os.statvfs(self._limits.incoming)
        free = self._free_at_check = stat.f_bavail * stat.f_frsize  # what shutil.disk_usage calls free
        self._checked_at = self._on_disk
        if free < self._limits.min_free_disk_bytes:
            self._refuse(StoreStatus.OUT_OF_RESOURCES,
                         f"free disk in the spool ({free} bytes) is below min_free_disk_bytes")

    def _refuse(self, status: StoreStatus, reason: str) -> None:
        self.refusal = Refusal(status, reason)
        self.discard()

    def finish(self) -> Received | Refusal:
        """The refusal noted while receiving, or the file written and fsynced; raises ``OSError``."""
        if self.refusal is None and self._fd is None:  # an empty dataset never opened a file
            self._open()
        if self.refusal is not None or self._fd is None or self.path is None:
            return self.refusal or Refusal(StoreStatus.CANNOT_UNDERSTAND, "no dataset was received")
        if self._fill or self._head is None:
            self._drain()
        os.fsync(self._fd)
        fd, self._fd = self._fd, None
        os.close(fd)
        free = self._free_at_check - (self._on_disk - self._checked_at) if self._next_space_check else None
        return Received(self.path, self.offset, self.offset + self.received, self._digest.hexdigest(),
                        self._head or b"", free)

    def moved(self) -> None:
        """The finished file was moved into place: :meth:`discard` leaves it alone."""
        self.path = None

    def discard(self) -> None:
        """Close and remove the spill file (idempotent; nothing raises)."""
        fd, self._fd = self._fd, None
        path, self.path = self.path, None
        self._fill = 0
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if path is not None:
            path.unlink(missing_ok=True)


def _write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a regular file may take less at once)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _request_prefix(message: DIMSEMessage, assoc: Association) -> bytes | Refusal:
    """Preamble, ``DICM`` and the file meta of a C-STORE request, as pynetdicom's ``Event.file_meta`` makes it."""
    if not isinstance(message, C_STORE_RQ) or message.context_id is None:
        return Refusal(StoreStatus.CANNOT_UNDERSTAND, "a dataset arrived that belongs to no C-STORE request")
    command = message.command_set
    context = assoc._accepted_cx.get(message.context_id)
    return checked_prefix(str(command.get("AffectedSOPClassUID", "")), str(command.get("AffectedSOPInstanceUID", "")),
                          None if context is None or not context.transfer_syntax else str(context.transfer_syntax[0]))


def checked_prefix(sop_class: str, sop_instance: str, transfer_syntax: str | None) -> bytes | Refusal:
    """:func:`file_meta_prefix` of a request whose UIDs are valid and whose presentation context was accepted
    (``transfer_syntax``), else the refusal."""
    for value, name in ((sop_class, "Affected SOP Class UID"), (sop_instance, "Affected SOP Instance UID")):
        if not value or len(value) > 64 or not _UID.match(value):
            return Refusal(StoreStatus.CANNOT_UNDERSTAND, f"the request's {name} is not a valid UID")
    if not transfer_syntax:
        return Refusal(StoreStatus.CANNOT_UNDERSTAND, "the dataset's presentation context was not accepted")
    return file_meta_prefix(sop_class, sop_instance, transfer_syntax)


def _element(tag: bytes, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return tag + vr + struct.pack("<H", len(value)) + value


def file_meta_prefix(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the file meta (Explicit VR Little Endian), byte for byte what pynetdicom's
    ``encode_file_meta(create_file_meta(...))`` writes, without building and encoding a pydicom dataset for every
    instance (that took more CPU than the rest of the prefix and the spill file together)."""
    body = b"".join((
        b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",  # File Meta Information Version
        _element(b"\x02\x00\x02\x00", b"UI", sop_class.encode("ascii"), b"\x00"),
        _element(b"\x02\x00\x03\x00", b"UI", sop_instance.encode("ascii"), b"\x00"),
        _element(b"\x02\x00\x10\x00", b"UI", transfer_syntax.encode("ascii"), b"\x00"),
        _IMPLEMENTATION,
    ))
    return _PREAMBLE + b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body)) + body


_PREAMBLE = b"\x00" * 128 + b"DICM"
_IMPLEMENTATION = (_element(b"\x02\x00\x12\x00", b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii"), b"\x00")
                   + _element(b"\x02\x00\x13\x00", b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" "))


_MESSAGE_DUMPS = ((evt.EVT_DIMSE_RECV, standard_dimse_recv_handler), (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
                  (evt.EVT_PDU_RECV, standard_pdu_recv_handler), (evt.EVT_PDU_SENT, standard_pdu_sent_handler))


def quiet_message_dumps(assoc: Association) -> None:
    """Unbind pynetdicom's standard logging handlers of every message and PDU unless its log shows DEBUG (``-vv``).

    They format a dump of each message whatever the log level, and log ``Received Store Request`` at INFO for every
    instance: a log line per instance in a listener process (it logs at INFO), which the audit already records.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, handler in _MESSAGE_DUMPS:
        assoc.unbind(event, handler)


def _implicit(tag: int, value: bytes) -> bytes:
    """One element of a command set (Implicit VR Little Endian; group 0000)."""
    return struct.pack("<HHI", 0, tag, len(value)) + value


def _uid(value: object) -> bytes:
    encoded = str(value).encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def store_response(primitive: C_STORE) -> bytes | None:
    """The encoded command set of a C-STORE-RSP, byte for byte as pynetdicom's ``C_STORE_RSP`` encodes it, or
    ``None`` when it carries more than the plain elements (Offending Element, Error Comment: pynetdicom's way)."""
    if (primitive.OffendingElement is not None or primitive.ErrorComment is not None or primitive.Status is None
            or primitive.MessageIDBeingRespondedTo is None):
        return None
    return store_response_command(primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                                  primitive.Status, primitive.AffectedSOPInstanceUID)


def store_response_command(sop_class: object, message_id: int, status: int, sop_instance: object) -> bytes:
    """The command set of a plain C-STORE-RSP (Implicit VR Little Endian), as pynetdicom encodes it; a ``None`` UID
    is left out."""
    elements = []
    if sop_class is not None:
        elements.append(_implicit(0x0002, _uid(sop_class)))
    elements += [
        _implicit(0x0100, b"\x01\x80"),  # Command Field: C-STORE-RSP
        _implicit(0x0120, struct.pack("<H", message_id)),
        _implicit(0x0800, b"\x01\x01"),  # Command Data Set Type: no data set
        _implicit(0x0900, struct.pack("<H", status)),
    ]
    if sop_instance is not None:
        elements.append(_implicit(0x1000, _uid(sop_instance)))
    body = b"".join(elements)
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


class BoundedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with every incoming message's dataset in a :class:`SpillBuffer`.

    A C-STORE request whose command set pynetdicom finds invalid (an empty Affected SOP Instance UID...) would be
    dropped without an answer, leaving the sender waiting for its DIMSE timeout: it is answered 0xC000 here (or,
    without a Message ID to answer, the association is aborted) and reported through ``report``.
    """

    def __init__(self, assoc: Association, limits: ReceiveLimits, report: Callable[[str], None]) -> None:
        super().__init__(assoc)
        self._limits = limits
        self._report = report

    @property
    def limits(self) -> ReceiveLimits:
        return self._limits

    def get_msg(self, block: bool = False) -> Any:
        context_id, message = super().get_msg(block)
        if (isinstance(message, C_STORE) and message.MessageIDBeingRespondedTo is None
                and not message.is_valid_request and context_id is not None):
            if isinstance(message.DataSet, SpillBuffer):
                message.DataSet.discard()
            if message.MessageID is None:
                self._report("a C-STORE request without a Message ID: association aborted")
                self.assoc.abort()
                return None, None
            self._report("a C-STORE request whose command set is invalid (Affected SOP Class / Instance UID, "
                         "Priority or data set missing): answered 0xC000")
            response = C_STORE()
            response.MessageIDBeingRespondedTo = message.MessageID
            response.Status = int(StoreStatus.CANNOT_UNDERSTAND)
            self.send_msg(response, context_id)
            return None, None
        return context_id, message

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        """pynetdicom's ``send_msg``; a plain C-STORE response (no Error Comment or Offending Element) nobody
        watches being sent (no ``EVT_DIMSE_SENT`` handler) is encoded by :func:`store_response` instead of
        through a pydicom dataset (0.35 ms of CPU per instance)."""
        if (isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
                and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            encoded = store_response(primitive)
            maximum = self.maximum_pdu_size
            if encoded is not None and (not maximum or len(encoded) <= maximum - 6):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            message = DIMSEMessage()
            message.data_set = SpillBuffer(self._limits, lambda: _request_prefix(message, self.assoc))
            self.message = message
        super().receive_primitive(primitive)

    def discard_partial(self) -> None:
        """Remove the spill file of a message the association ended in the middle of."""
        message = self.message
        if message is not None and isinstance(message.data_set, SpillBuffer):
            message.data_set.discard()
