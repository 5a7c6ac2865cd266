"""The C-STORE fast lane (node.scp.lane) and the woken reactor (node.scp.reactor), against a real listener."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.filewriter import write_dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ

from node.scp.lane import LaneDUL, parse_command
from node.scp.reactor import WakingAssociation
from node.scp.server import ListenerHandle
from node.scp.status import StoreStatus
from tests.scp.fixtures import FakeClock, ListenerFactory, associate, dataset_bytes, send
from tests.support.studies import SynthCase


def _store_command(message_id: int = 7, sop_instance: str = "1.2.3.4.5") -> bytes:
    message = C_STORE_RQ()
    command = message.command_set
    command.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0001
    command.AffectedSOPInstanceUID = sop_instance
    from pydicom.filebase import DicomBytesIO

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, command)
    return bytes(out.getvalue())


def test_parse_command_reads_what_pynetdicom_encodes() -> None:
    elements = parse_command(_store_command(message_id=513))
    assert elements is not None
    assert struct.unpack("<H", elements[0x0100])[0] == 0x0001
    assert struct.unpack("<H", elements[0x0110])[0] == 513
    assert elements[0x1000].rstrip(b"\x00") == b"1.2.3.4.5"


@pytest.mark.parametrize("damage", ["cut", "group", "length"])
def test_parse_command_leaves_a_malformed_command_to_pynetdicom(damage: str) -> None:
    command = bytearray(_store_command())
    if damage == "cut":
        command = command[:-3]
    elif damage == "group":
        command[0:2] = b"\x08\x00"
    else:
        command[4:8] = struct.pack("<L", 10_000)
    assert parse_command(command) is None


@pytest.fixture
def pynetdicom_assembled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the P-DATA primitives pynetdicom's DIMSE provider assembles in the listener (and in the test SCU,
    which receives only responses)."""
    calls: list[int] = []
    original = DIMSEServiceProvider.receive_primitive

    def counted(self: DIMSEServiceProvider, primitive: object) -> None:
        if self.assoc.is_acceptor:
            calls.append(1)
        original(self, primitive)  # type: ignore[arg-type]

    monkeypatch.setattr(DIMSEServiceProvider, "receive_primitive", counted)
    return calls


def test_c_store_requests_take_the_lane_and_store_byte_identical(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, pynetdicom_assembled: list[int]
) -> None:
    """Old code: every fragment of every C-STORE went through pynetdicom's DIMSE assembly and reactor."""
    listener = start(sqlite_url, FakeClock(), max_pdu=4096)  # a small maximum PDU: many PDUs per instance
    files = list(synth_case.t2[:3]) + list(synth_case.seg)
    assert send(listener.port, files) == [StoreStatus.SUCCESS] * len(files)
    assert pynetdicom_assembled == []
    listener.flush()
    stored = sorted(listener.spool.root.glob("[!.]*/*/*.dcm"))
    assert sorted(dataset_bytes(p) for p in stored) == sorted(dataset_bytes(p) for p in files)
    assert list((listener.spool.root / ".incoming").rglob("rx-*.part")) == []


def _raw_socket(assoc: Association) -> socket.socket:
    """The SCU association's TCP socket, to send PDUs pynetdicom would not."""
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    return assoc.dul.socket.socket


@pytest.fixture
def connected(start: ListenerFactory, sqlite_url: str) -> Iterator[tuple[ListenerHandle, Association]]:
    """A listener and an established association to it (released at the end unless it ended)."""
    listener = start(sqlite_url, FakeClock())
    assoc = associate(listener.port)
    assert assoc.is_established
    yield listener, assoc
    if assoc.is_established:
        assoc.release()


def test_echo_still_goes_to_pynetdicom(connected: tuple[ListenerHandle, Association], synth_case: SynthCase,
                                       pynetdicom_assembled: list[int]) -> None:
    listener, assoc = connected
    assert assoc.send_c_echo().Status == 0
    assert len(pynetdicom_assembled) == 1
    assert send(listener.port, synth_case.t2[:1]) == [StoreStatus.SUCCESS]
    assert len(pynetdicom_assembled) == 1  # the C-STORE took the lane
    assert assoc.send_c_echo().Status == 0  # and the association is fine after it


def test_a_store_request_without_instance_uid_is_answered_0xc000_through_pynetdicom(
    connected: tuple[ListenerHandle, Association], synth_case: SynthCase, pynetdicom_assembled: list[int]
) -> None:
    listener, assoc = connected
    raw = _raw_socket(assoc)
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.4")
    command = _store_command(message_id=9, sop_instance="")
    pdvs = (struct.pack(">LBB", len(command) + 2, context.context_id, 0x03) + command
            + struct.pack(">LBB", 10, context.context_id, 0x02) + b"\x08\x00\x16\x00\x00\x00\x00\x00")
    assoc._reactor_checkpoint.clear()  # the SCU's own reactor must not take the response (as send_c_store)
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        raw.sendall(struct.pack(">BBL", 4, 0, len(pdvs)) + pdvs)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None and response.MessageIDBeingRespondedTo == 9
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert pynetdicom_assembled  # pynetdicom's DIMSE provider decided, as before
    assert send(listener.port, synth_case.t2[:1]) == [StoreStatus.SUCCESS]


def test_a_malformed_p_data_pdu_aborts_the_association(connected: tuple[ListenerHandle, Association]) -> None:
    _, assoc = connected
    raw = _raw_socket(assoc)
    # a P-DATA-TF whose one presentation data value claims more bytes than the PDU holds
    raw.sendall(struct.pack(">BBL", 4, 0, 8) + struct.pack(">LBB", 500, 1, 0x03) + b"\x00\x00")
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted


def test_no_lane_while_pynetdicom_dumps_every_pdu(start: ListenerFactory, sqlite_url: str, synth_case: SynthCase,
                                                   pynetdicom_assembled: list[int]) -> None:
    listener = start(sqlite_url, FakeClock())
    server = listener.server
    server._handlers[evt.EVT_PDU_RECV] = [(lambda event: None, None)]
    assert send(listener.port, synth_case.t2[:1]) == [StoreStatus.SUCCESS]
    assert pynetdicom_assembled  # pynetdicom's own path, as before


def test_the_lane_is_chosen_only_with_the_nodes_store_handler() -> None:
    from pynetdicom import AE
    from pynetdicom._globals import MODE_ACCEPTOR

    from node.scp.lane import lane_for

    assoc = WakingAssociation(AE(), MODE_ACCEPTOR)
    assert isinstance(assoc.dul, LaneDUL)
    assoc.bind(evt.EVT_C_STORE, lambda event: 0)
    assert lane_for(assoc, assoc.dul) is None  # a C-STORE handler that is not the node's: pynetdicom's path


def test_the_reactor_sleeps_until_something_arrives(
    start: ListenerFactory, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: pynetdicom's reactor looked for a message every millisecond (~300 looks in 0.3 s)."""
    looks: list[float] = []
    listener = start(sqlite_url, FakeClock())
    assoc = associate(listener.port)
    assert assoc.is_established
    try:
        acceptor = next(a for a in listener.server.active_associations)
        get_msg = acceptor.dimse.get_msg

        def counted(block: bool = False) -> object:
            looks.append(time.monotonic())
            return get_msg(block)

        monkeypatch.setattr(acceptor.dimse, "get_msg", counted)
        time.sleep(0.3)
        idle_looks = len(looks)
        started = time.monotonic()
        assert assoc.send_c_echo().Status == 0  # a message wakes it at once
        assert any(t >= started for t in looks)
    finally:
        assoc.release()
    assert idle_looks <= 12  # one every REACTOR_WAIT_S (50 ms) at most


def test_the_dul_loop_does_not_sleep_between_messages(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: pynetdicom's DUL loop called ``time.sleep(0)`` after each message it served (a system call and a
    hand-off of the GIL per instance); the loop waits for data in the socket's ``ready`` instead."""
    listener = start(sqlite_url, FakeClock())
    sleeps: list[float] = []
    original = time.sleep

    def counted(seconds: float) -> None:
        dul = sys._getframe(1).f_locals.get("self")
        if isinstance(dul, LaneDUL) and dul.assoc.is_established:  # the listener's DUL loop (not the test's), while
            sleeps.append(seconds)  # instances may arrive (after the release it may rest until it is stopped)
        original(seconds)

    monkeypatch.setattr(time, "sleep", counted)
    files = list(synth_case.t2[:8])
    assert send(listener.port, files) == [StoreStatus.SUCCESS] * len(files)
    assert len(sleeps) < len(files) // 2, sleeps


def test_a_stopped_sender_mid_message_does_not_hold_the_listener(connected: tuple[ListenerHandle, Association]) -> None:
    """The lane reads a message's next PDUs itself only while they are already there: a sender that stops
    half-way leaves the DUL loop free, and stopping the listener aborts the association at once."""
    listener, assoc = connected
    raw = _raw_socket(assoc)
    context = assoc.accepted_contexts[0]
    command = _store_command()
    pdv = struct.pack(">LBB", len(command) + 2, context.context_id, 0x03) + command
    raw.sendall(struct.pack(">BBL", 4, 0, len(pdv)) + pdv)
    half = struct.pack(">LBB", 1002, context.context_id, 0x00) + b"\x00" * 1000  # a first data set fragment
    raw.sendall(struct.pack(">BBL", 4, 0, len(half)) + half)
    time.sleep(0.2)
    started = time.monotonic()
    stopper = threading.Thread(target=listener.stop)
    stopper.start()
    stopper.join(timeout=20)
    assert not stopper.is_alive()
    assert time.monotonic() - started < 10
    assert list((Path(listener.spool.root) / ".incoming").rglob("rx-*.part")) == []
    raw.close()


def _associate_rq(sop_class: str, transfer_syntax: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU (calling PACS, called AINODE) with one presentation context (ID 1)."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "PACS", "AINODE"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 0)
    context = build_context(sop_class, [transfer_syntax])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    maximum.maximum_length_received = 16382
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "the listener closed the connection"
            data += chunk
        return data

    kind, _, length = struct.unpack(">BBL", exactly(6))
    return kind, exactly(length)


def test_a_whole_association_in_one_write_is_answered(start: ListenerFactory, sqlite_url: str,
                                                       synth_case: SynthCase) -> None:
    """The listener reads ahead of the PDU it needs: a C-STORE in many small PDUs and the A-RELEASE-RQ, arriving
    in one segment, are all answered (nothing read ahead waits for more bytes from the peer)."""
    import pydicom

    listener = start(sqlite_url, FakeClock())
    path = synth_case.t2[0]
    info = pydicom.dcmread(path, stop_before_pixels=True)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(_associate_rq(str(info.SOPClassUID), str(info.file_meta.TransferSyntaxUID)))
        kind, _ = _read_pdu(sock)
        assert kind == 0x02  # A-ASSOCIATE-AC
        command = _store_command(message_id=3, sop_instance=str(info.SOPInstanceUID))
        pdus = [struct.pack(">BBL", 4, 0, len(command) + 6) + struct.pack(">LBB", len(command) + 2, 1, 0x03) + command]
        data = dataset_bytes(path)
        fragments = [data[i:i + 4000] for i in range(0, len(data), 4000)]
        for number, fragment in enumerate(fragments):
            control = 0x02 if number == len(fragments) - 1 else 0x00
            pdv = struct.pack(">LBB", len(fragment) + 2, 1, control) + fragment
            pdus.append(struct.pack(">BBL", 4, 0, len(pdv)) + pdv)
        pdus.append(struct.pack(">BBL", 5, 0, 4) + b"\x00" * 4)  # A-RELEASE-RQ
        sock.sendall(b"".join(pdus))
        kind, body = _read_pdu(sock)
        assert kind == 0x04  # the C-STORE response
        status = body.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")  # (0000,0900) Status, 2 bytes
        assert status > 0 and struct.unpack_from("<H", body, status + 8)[0] == StoreStatus.SUCCESS
        kind, _ = _read_pdu(sock)
        assert kind == 0x06  # A-RELEASE-RP, without waiting for anything more from the peer
    listener.flush()
    assert [s.instance_count for s in listener.repository.studies()] == [1]
