"""C-STORE SCU against real peers: pynetdicom Storage SCP in-process and dcmtk storescp as a subprocess."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

from node.delivery.scu import send_files
from node.errors import DeliveryRefusedError, PacsUnavailableError, TransientError
from node.values import Destination
from tests.delivery.conftest import make_file, sop_uid
from tests.support.net import free_port
from tests.support.scp import StoreSCP


def test_send_stores_every_file_unchanged(tmp_path: Path, scp_factory: Callable[..., StoreSCP]) -> None:
    scp = scp_factory()
    files = [make_file(tmp_path / "out"), make_file(tmp_path / "out"), make_file(tmp_path / "out",
                                                                              SecondaryCaptureImageStorage)]
    send_files(files, scp.destination, calling_ae="AINODE", timeout_s=10)
    assert sorted(scp.received) == sorted(sop_uid(p) for p in files)
    for path in files:
        stored = pydicom.dcmread(scp.directory / f"{sop_uid(path)}.dcm")
        assert stored.PixelData == pydicom.dcmread(path).PixelData


def test_send_to_dcmtk_storescp(tmp_path: Path, storescp: tuple[Destination, Path]) -> None:
    destination, received = storescp
    files = [make_file(tmp_path / "out") for _ in range(3)]
    send_files(files, destination, timeout_s=10)
    stored = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in received.iterdir()}
    assert stored == {sop_uid(p) for p in files}


def test_peer_down_is_transient(tmp_path: Path) -> None:
    with pytest.raises(PacsUnavailableError) as caught:
        send_files([make_file(tmp_path)], Destination("PACS", "127.0.0.1", free_port()), timeout_s=5)
    assert isinstance(caught.value, TransientError)
    assert "association" in caught.value.message


def test_wrong_called_ae_title_rejected_is_transient(tmp_path: Path, scp_factory: Callable[..., StoreSCP]) -> None:
    scp = scp_factory()
    scp.server.ae.require_called_aet = True
    with pytest.raises(PacsUnavailableError, match="rejected"):
        send_files([make_file(tmp_path)], Destination("NOTPACS", "127.0.0.1", scp.port), timeout_s=5)


@pytest.mark.parametrize("status", [0xA700, 0x0110, 0xC000])
def test_failure_status_is_transient_with_status(
    tmp_path: Path, scp_factory: Callable[..., StoreSCP], status: int
) -> None:
    scp = scp_factory(status=status)
    with pytest.raises(PacsUnavailableError) as caught:
        send_files([make_file(tmp_path)], scp.destination, timeout_s=5)
    assert caught.value.status == status and f"0x{status:04X}" in caught.value.message


@pytest.mark.parametrize("status", [0x0122, 0xA900])
def test_refusal_status_is_permanent(tmp_path: Path, scp_factory: Callable[..., StoreSCP], status: int) -> None:
    scp = scp_factory(status=status)
    with pytest.raises(DeliveryRefusedError) as caught:
        send_files([make_file(tmp_path)], scp.destination, timeout_s=5)
    assert caught.value.status == status
    assert not isinstance(caught.value, TransientError)


def test_warning_status_counts_as_stored(tmp_path: Path, scp_factory: Callable[..., StoreSCP]) -> None:
    scp = scp_factory(status=0xB000)
    path = make_file(tmp_path)
    send_files([path], scp.destination, timeout_s=5)
    assert scp.received == [sop_uid(path)]


def test_sop_class_not_accepted_is_permanent(tmp_path: Path, scp_factory: Callable[..., StoreSCP]) -> None:
    scp = scp_factory(sop_classes=[MRImageStorage])
    mr, sc = make_file(tmp_path), make_file(tmp_path, SecondaryCaptureImageStorage)
    with pytest.raises(DeliveryRefusedError, match="does not accept SOP class"):
        send_files([mr, sc], scp.destination, timeout_s=5)
    assert scp.received == [sop_uid(mr)]  # sent in order until the refused one


def test_peer_accepting_no_offered_context_is_permanent(
    tmp_path: Path, scp_factory: Callable[..., StoreSCP]
) -> None:
    """pynetdicom answers "no presentation context accepted" with an A-ABORT: a refusal, not a peer down."""
    scp = scp_factory(sop_classes=[MRImageStorage])
    with pytest.raises(DeliveryRefusedError, match="accepts none of the offered SOP classes") as caught:
        send_files([make_file(tmp_path, SecondaryCaptureImageStorage)], scp.destination, timeout_s=5)
    assert caught.value.status == 0x0122 and not isinstance(caught.value, TransientError)


def test_unreadable_file_is_refused_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(DeliveryRefusedError, match="not a readable DICOM"):
        send_files([bad], Destination("PACS", "127.0.0.1", free_port()), timeout_s=5)


def test_nothing_to_send_opens_no_association() -> None:
    send_files([], Destination("PACS", "127.0.0.1", free_port()))


def test_next_request_waits_for_the_reactor_to_resume() -> None:
    """pynetdicom's reactor may still look paused right after a request (starved CPU): sending then lets the
    reactor steal the next C-STORE response ("Received unexpected C-STORE service message", then a DIMSE
    timeout). ``wait_reactor_resumed`` holds the next request until the reactor has left its pause."""
    import threading
    import time

    from node.delivery.scu import wait_reactor_resumed

    class FakeAssociation:
        is_established = True
        _is_paused = True

    assoc = FakeAssociation()

    def resume() -> None:
        time.sleep(0.05)
        assoc._is_paused = False

    started = time.monotonic()
    threading.Thread(target=resume).start()
    wait_reactor_resumed(assoc)  # type: ignore[arg-type]
    assert assoc._is_paused is False and time.monotonic() - started >= 0.04
