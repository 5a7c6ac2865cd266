"""Misbehaving peers: the PACS down then up, idle sockets held open, a poisoned study before a good one."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from node.ledger import deliveries as store_rows
from node.values import Destination
from tests.chaos.conftest import NodeFactory, Pacs, study_files
from tests.chaos.harness import echo, free_port, store, study_uid, wait_for


@pytest.mark.slow
def test_pacs_down_then_up_the_sr_arrives(studies: list[Path], make_node: NodeFactory, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: the PACS is down
    node = make_node(Destination("PACS", "127.0.0.1", port))
    node.start().wait_listening()
    study = studies[2]
    uid = study_uid(study)
    assert set(store(node.port, study_files(study))) == {0}

    def retried() -> bool:
        return any(d.attempts >= 1 and d.state.value == "pending" for d in store_rows.deliveries(node.repo))

    wait_for(retried, 600, "a delivery attempt that failed (the PACS is down)", interval=1.0)
    attempts_down = max(d.attempts for d in store_rows.deliveries(node.repo))
    pacs = Pacs(tmp_path / "pacs", port)
    pacs.start()
    up_at = time.monotonic()
    try:
        wait_for(lambda: pacs.reports(uid), 300, "the SR once the PACS is up", interval=1.0)
        arrived_s = time.monotonic() - up_at
    finally:
        pacs.stop()
    print(f"\nCHAOS pacs-down: {attempts_down} failed attempt(s) while down; SR {arrived_s:.0f} s after the PACS "
          "came up")
    assert node.stop() < 10


@pytest.mark.slow
def test_twelve_idle_sockets_do_not_lock_out_a_c_echo(make_node: NodeFactory) -> None:
    node = make_node(None)
    node.start().wait_listening()
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(12)]
    try:
        started = time.monotonic()
        ok = echo(node.port, timeout=10)
        answered_s = time.monotonic() - started
        print(f"\nCHAOS idle-sockets: 12 idle sockets held, C-ECHO {'succeeded' if ok else 'failed'} in "
              f"{answered_s:.1f} s")
        assert ok
    finally:
        for sock in idle:
            sock.close()
    assert node.stop() < 10


def _poisoned_copy(study: Path, folder: Path) -> Path:
    """``study`` under new UIDs, its MR instances carrying ContrastBolusAgentSequence (0018,0012) as VR LO (and no
    ContrastBolusAgent), as in issue 10 item 1."""
    study_uid_new, frame = generate_uid(), generate_uid()
    series_uids: dict[str, str] = {}
    for path in study_files(study):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid_new
        ds.SeriesInstanceUID = series_uids.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if "FrameOfReferenceUID" in ds:
            ds.FrameOfReferenceUID = frame
        if ds.Modality == "MR":  # a sequence sent as a string, read when no ContrastBolusAgent is given
            if "ContrastBolusAgent" in ds:
                del ds.ContrastBolusAgent
            ds[0x00180012] = RawDataElement(Tag(0x00180012), "LO", 8, b"GADOLINI", 0, False, True)
        target = folder / path.relative_to(study)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
    return folder


@pytest.mark.slow
def test_a_poisoned_study_then_a_good_one_gets_its_sr(studies: list[Path], pacs: Pacs, make_node: NodeFactory,
                                                       tmp_path: Path) -> None:
    pacs.start()
    node = make_node(pacs.destination)
    node.start().wait_listening()
    poisoned = _poisoned_copy(studies[3], tmp_path / "poisoned")
    statuses = store(node.port, study_files(poisoned))
    good = studies[1]
    sent_at = time.monotonic()
    assert set(store(node.port, study_files(good))) == {0}
    wait_for(lambda: pacs.reports(study_uid(good)), 180, "the good study's SR", interval=1.0)
    print(f"\nCHAOS poisoned: poisoned study answered {sorted({hex(s) for s in statuses})}; the good study's SR "
          f"{time.monotonic() - sent_at:.0f} s after it was sent")
    assert node.stop() < 10
