"""The C-STORE fast lane: a C-STORE request's P-DATA handled in the association's DUL thread, start to answer.

pynetdicom turns every P-DATA-TF PDU into a PDU object, a P-DATA primitive and a state-machine event, assembles the
DIMSE message in the DUL thread, decodes its command set into a pydicom dataset and builds a C-STORE primitive
(with a validating setter per attribute), queues it for the association's reactor thread, which wakes, builds an
``Event``, calls the handler, encodes the response through another pydicom dataset and queues it back to the DUL
thread to be sent. For a storage listener that machinery cost more CPU than checking and storing the instance
durably, and two thread hand-offs per instance on the one path a sender waits on.

:class:`LaneDUL` reads each P-DATA-TF PDU of an established association (state Sta6) itself, and
:class:`StoreLane` takes its presentation data values:

* **A C-STORE request whose command set is complete and valid** (Message ID, Affected SOP Class and Instance
  UIDs, Priority, a data set, an accepted presentation context, a storage SOP class) is received here: its data
  set fragments go straight into a :class:`node.scp.receive.SpillBuffer` (the same file, limits and digest as
  before), the node's C-STORE handler (:func:`node.scp.handlers.store`: the same checks, durability, ledger and
  audit) runs in this thread, and the C-STORE response is encoded and sent from here.
* **Everything else** (C-ECHO, a C-STORE request pynetdicom would refuse or abort on, a data set without a command,
  anything after a release was sent) is handed to pynetdicom's DIMSE provider fragment by fragment, as it arrived:
  pynetdicom serves it exactly as before.

The lane is only used when nothing watches the traffic (no PDU, data or DIMSE message event handlers: pynetdicom's
message dumps at DEBUG) and the association's C-STORE handler is the node's own. A malformed P-DATA-TF PDU is an
invalid PDU for the state machine (Evt19: A-ABORT), as in pynetdicom.
"""

from __future__ import annotations

import logging
import queue
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from node.scp import handlers
from node.scp.receive import SpillBuffer, checked_prefix, store_response_command

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from node.scp.receive import ReceiveLimits

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
C_STORE_RQ = 0x0001
NO_DATA_SET = 0x0101
_PDV = struct.Struct(">LBB")
_PDU_HEADER = struct.Struct(">BBL")
_ELEMENT = struct.Struct("<HHL")
_U16 = struct.Struct("<H")

#: Events whose handlers see every PDU or message: with any of them bound, pynetdicom's own path is kept.
WATCHING = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_DIMSE_RECV, evt.EVT_DATA_SENT, evt.EVT_PDU_SENT,
            evt.EVT_DIMSE_SENT)
_storage_classes: dict[str, bool] = {}


class MalformedPDUError(ValueError):
    """A P-DATA-TF PDU whose presentation data values do not add up."""


def is_storage_class(uid: str) -> bool:
    """Whether pynetdicom serves ``uid`` with its Storage service class (what the node's handler is bound to)."""
    known = _storage_classes.get(uid)
    if known is None:
        known = _storage_classes[uid] = uid_to_service_class(uid) is StorageServiceClass
    return known


def parse_command(data: bytes | bytearray) -> dict[int, bytes] | None:
    """The elements of a command set (Implicit VR Little Endian, group 0000) by element number, or ``None`` if it
    is not a well-formed command set (pynetdicom then decides what it is)."""
    elements: dict[int, bytes] = {}
    position, end = 0, len(data)
    while position < end:
        if end - position < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(data, position)
        position += 8
        if group != 0 or length > end - position:
            return None
        elements[element] = bytes(data[position:position + length])
        position += length
    return elements


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.rstrip(b"\x00 ").decode("ascii").strip()
    except UnicodeDecodeError:
        return None


def _us(value: bytes | None) -> int | None:
    return _U16.unpack(value)[0] if value is not None and len(value) == 2 else None


class _Store:
    """The C-STORE request being received in the lane."""

    def __init__(self, context_id: int, message_id: int, request: handlers.StoreRequest, spill: SpillBuffer) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.request = request
        self.spill = spill


class StoreLane:
    """The presentation data values of one association; see the module docstring."""

    def __init__(self, assoc: Association, dul: LaneDUL, context: handlers.ListenerContext,
                 limits: ReceiveLimits) -> None:
        self._assoc = assoc
        self._dul = dul
        self._context = context
        self._limits = limits
        self._command = bytearray()
        self._store: _Store | None = None
        self._to_pynetdicom = False  # the rest of the current message goes to pynetdicom's DIMSE provider
        self._scratch = bytearray()  # the spill buffers' gathering space, one message at a time

    def p_data(self, body: bytearray) -> None:
        """One P-DATA-TF PDU's body (after the 6-byte header); raises :class:`MalformedPDUError`."""
        view = memoryview(body)
        position, end = 0, len(body)
        while position < end:
            if end - position < 6:
                raise MalformedPDUError("a presentation data value item is cut short")
            length, context_id, control = _PDV.unpack_from(body, position)
            if length < 2 or length > end - position - 4:
                raise MalformedPDUError(f"a presentation data value item declares {length} bytes")
            self._value(context_id, control, view[position + 6:position + 4 + length])
            position += 4 + length

    @property
    def mid_message(self) -> bool:
        """Whether a C-STORE request taken by the lane is still being received."""
        return self._store is not None or bool(self._command)

    def _value(self, context_id: int, control: int, fragment: memoryview) -> None:
        if self._to_pynetdicom:
            self._forward(context_id, control, fragment)
            if control & 2 and not control & 1:  # the message's last data set fragment
                self._to_pynetdicom = False
            return
        if control & 1:  # command
            if self._store is not None:  # a new command in the middle of a data set: pynetdicom's problem
                self._abandon_store()
                self._to_pynetdicom = True
                self._forward(context_id, control, fragment)
                return
            self._command += fragment
            if control & 2:
                self._command_complete(context_id)
            return
        store = self._store
        if store is None:  # a data set without a command (or after one pynetdicom takes)
            self._forward(context_id, control, fragment)
            return
        store.spill.write(fragment)
        if control & 2:
            self._store = None
            self._answer(store)

    def _command_complete(self, context_id: int) -> None:
        command, self._command = bytes(self._command), bytearray()
        elements = parse_command(command)
        store = None if elements is None else self._store_request(context_id, elements)
        if store is not None:
            self._store = store
            return
        self._forward(context_id, 0x03, memoryview(command))  # the whole command set as one last fragment
        if elements is None or _us(elements.get(0x0800)) != NO_DATA_SET:
            self._to_pynetdicom = self._dimse_waiting_for_data()

    def _dimse_waiting_for_data(self) -> bool:
        """Whether pynetdicom's DIMSE provider kept the message open for a data set (it closes one it cannot
        decode)."""
        return self._assoc.dimse.message is not None

    def _store_request(self, context_id: int, elements: dict[int, bytes]) -> _Store | None:
        assoc = self._assoc
        if _us(elements.get(0x0100)) != C_STORE_RQ or _us(elements.get(0x0800)) in (None, NO_DATA_SET):
            return None
        message_id, priority = _us(elements.get(0x0110)), _us(elements.get(0x0700))
        sop_class, sop_instance = _text(elements.get(0x0002)), _text(elements.get(0x1000))
        if message_id is None or priority is None or not sop_class or not sop_instance:
            return None
        accepted = assoc._accepted_cx.get(context_id)
        extended = assoc.acceptor.accepted_common_extended
        if (accepted is None or not accepted.transfer_syntax or assoc._sent_release
                or (extended and UID(sop_class) in extended)
                or not is_storage_class(sop_class)):
            return None
        transfer_syntax = str(accepted.transfer_syntax[0])
        request = handlers.StoreRequest(sop_class, sop_instance, transfer_syntax, assoc, *handlers.requestor(assoc))
        spill = SpillBuffer(self._limits, lambda: checked_prefix(sop_class, sop_instance, transfer_syntax),
                            self._scratch)
        return _Store(context_id, message_id, request, spill)

    def _answer(self, store: _Store) -> None:
        try:
            status = handlers.store(self._context, store.request, store.spill)
        except Exception:  # as pynetdicom answers an exception in an EVT_C_STORE handler
            logger.exception("Exception in the C-STORE handler")
            status = 0xC211
        assoc = self._assoc
        if assoc.is_aborted or assoc.is_released or self._dul.state_machine.current_state != "Sta6":
            return  # aborted (or released) meanwhile: nothing to answer
        command = store_response_command(store.request.sop_class_uid, store.message_id, status,
                                         store.request.sop_instance_uid)
        pdv = _PDV.pack(len(command) + 2, store.context_id, 0x03) + command
        maximum = assoc.requestor.maximum_length
        if maximum and len(pdv) > maximum:
            self._dul.send_via_pynetdicom(store.context_id, command)
            return
        self._dul.send_raw(_PDU_HEADER.pack(P_DATA_TF, 0, len(pdv)) + pdv)

    def _forward(self, context_id: int, control: int, fragment: memoryview) -> None:
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, bytes((control,)) + bytes(fragment)))
        self._assoc.dimse.receive_primitive(primitive)

    def _abandon_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.spill.discard()

    def close(self) -> None:
        """The association ended: remove the spill file of a message cut off mid-way."""
        self._abandon_store()


class LaneDUL(DULServiceProvider):
    """pynetdicom's DUL provider whose P-DATA-TF PDUs in Sta6 go to a :class:`StoreLane` once one is attached."""

    lane: StoreLane | None = None
    _lane_decided = False

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop (3.0) without its sleep between turns: with ``_run_loop_delay`` 0 that was a
        ``time.sleep(0)`` per received message (a system call, and a hand-off of the GIL to another thread that
        this one then waited to take back). The loop waits for data in the socket's ``ready`` instead (up to
        ``IDLE_WAIT_S``, woken when there is something to send); a socket that cannot wait (one that is not the
        node's, or one closed) still gets the 1 ms sleep, so the loop never spins."""
        self._idle_timer.start()
        rest = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                rest = True
            if rest:
                sock = self.socket
                if not (getattr(sock, "waits_for_data", False) and getattr(sock, "_is_connected", False)):
                    time.sleep(0.001)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("Exception in the DUL loop, aborting the association")
                logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                cast(Any, self.socket).send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                rest = True
                continue
            self.state_machine.do_action(event)
            rest = False

    def _read_pdu_data(self) -> None:
        if self.state_machine.current_state != "Sta6":
            super()._read_pdu_data()
            return
        if not self._lane_decided and self.assoc.dimse.message is None:  # between two messages, in this thread
            self._lane_decided = True
            self.lane = lane_for(self.assoc, self)
        lane = self.lane
        if lane is None:
            super()._read_pdu_data()
            return
        sock = cast(Any, self.socket)
        buffered = getattr(sock, "buffered_pdu", None)  # a PDU read ahead whole is taken without a system call
        sending = self.to_provider_queue.queue  # what waits to be sent (peeked without the queue's lock)
        while True:
            body = buffered(P_DATA_TF) if buffered is not None else None
            if body is None:
                header = self._read(sock, 6)
                if header is None:
                    return
                if len(header) != 6 or header[0] != P_DATA_TF:
                    sock.unread(bytes(header))
                    super()._read_pdu_data()
                    return
                length = _PDU_HEADER.unpack(header)[2]
                body = self._read(sock, length)
                if body is None:
                    return
                if len(body) != length:
                    logger.error("The received PDU is shorter than expected (%d of %d bytes)", len(body) + 6,
                                 length + 6)
                    self.event_queue.put("Evt17")
                    return
            try:
                lane.p_data(body)
            except MalformedPDUError as exc:
                logger.error("Unable to decode the received PDU data: %s", exc)
                self.event_queue.put("Evt19")
                return
            # the rest of the message follows: read its next PDU here, without a turn of the DUL loop per PDU, as
            # long as it arrives at once and nothing waits to be sent (an A-ABORT to send, or one received, goes
            # through pynetdicom's loop as usual)
            if not lane.mid_message or sending or not sock.ready:
                return
            self._idle_timer.restart()

    def _read(self, sock: Any, size: int) -> bytearray | None:
        """``size`` bytes (fewer if the peer closed), or ``None`` after a read error (Evt17, as pynetdicom)."""
        try:
            return cast(bytearray, sock.recv(size))
        except (OSError, TimeoutError):
            logger.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return None

    def send_raw(self, pdu: bytes) -> None:
        """Send an encoded PDU from this thread (a P-DATA-TF in Sta6: no state change)."""
        cast(Any, self.socket).send(pdu)

    def send_via_pynetdicom(self, context_id: int, command: bytes) -> None:
        """Send a command set through pynetdicom's queue (it splits it for a peer's small maximum PDU length)."""
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.send_pdu(primitive)


def lane_for(assoc: Association, dul: LaneDUL) -> StoreLane | None:
    """A :class:`StoreLane` for an established association, unless something rules it out (see the module
    docstring); decided by the DUL thread before the first message it reads in Sta6."""
    if any(assoc.get_handlers(event) for event in WATCHING):
        return None
    bound = cast(Any, assoc.get_handlers(evt.EVT_C_STORE))
    if not bound or bound[0] is not handlers.handle_store or not bound[1]:
        return None
    context = bound[1][0]
    limits = getattr(assoc.dimse, "limits", None)
    if not isinstance(context, handlers.ListenerContext) or limits is None:
        return None
    return StoreLane(assoc, dul, context, limits)
