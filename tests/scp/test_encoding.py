"""The listener's hand-made encodings are byte for byte what pynetdicom and pydicom would write."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta

from node.scp.receive import file_meta_prefix, store_response
from node.scp.status import StoreStatus
from tests.scp.fixtures import FakeClock, ListenerFactory, send
from tests.support.studies import SynthCase

MR = "1.2.840.10008.5.1.4.1.1.4"  # odd length
SEG = "1.2.840.10008.5.1.4.1.1.66.4"  # even length


@pytest.mark.parametrize("sop_class", [MR, SEG])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1." + "2" * 62])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50",
                                    "1.2.840.10008.1.2.1.99"])
def test_file_meta_prefix_is_what_pynetdicom_writes(sop_class: str, sop_instance: str, syntax: str) -> None:
    meta = create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                            transfer_syntax=UID(syntax))
    assert file_meta_prefix(sop_class, sop_instance, syntax) == b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize(("level", "dumped"), [(logging.INFO, False), (logging.DEBUG, True)])
def test_message_dumps_only_when_pynetdicom_logs_debug(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, caplog: pytest.LogCaptureFixture, level: int,
    dumped: bool,
) -> None:
    """pynetdicom logs ``Received Store Request`` at INFO for every instance and formats a dump of every message:
    the listener keeps that for ``-vv`` only."""
    listener = start(sqlite_url, FakeClock())
    with caplog.at_level(level, logger="pynetdicom"):
        assert send(listener.port, synth_case.all[:2]) == [StoreStatus.SUCCESS] * 2
    received = [r for r in caplog.records if r.getMessage() == "Received Store Request"]
    assert len(received) == (2 if dumped else 0)


def _response(status: int, message_id: int, sop_class: str | None, sop_instance: str | None) -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.Status = status
    if sop_class is not None:
        response.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        response.AffectedSOPInstanceUID = sop_instance
    return response


@pytest.mark.parametrize("status", [0x0000, 0xB007, 0xA700, 0xC211])
@pytest.mark.parametrize("message_id", [1, 300, 65535])
@pytest.mark.parametrize(("sop_class", "sop_instance"), [(MR, "1.2.3.4"), (SEG, "1.2.3.45"), (None, None)])
def test_store_response_is_what_pynetdicom_encodes(status: int, message_id: int, sop_class: str | None,
                                                   sop_instance: str | None) -> None:
    response = _response(status, message_id, sop_class, sop_instance)
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    assert store_response(response) == encode(message.command_set, True, True)


def test_store_response_leaves_error_comments_to_pynetdicom() -> None:
    response = _response(0xC000, 1, MR, "1.2.3.4")
    setattr(response, "ErrorComment", "cannot understand")  # noqa: B010 - pynetdicom types the attribute None
    assert store_response(response) is None
