"""Confirmed delivery against a real PACS: the outbox stores a result in Orthanc, asks it for Storage Commitment
(N-ACTION) and takes Orthanc's N-EVENT-REPORT, which Orthanc sends on a new association to the node's calling AE
as registered in its DicomModalities (host, ``commitment_port``). The round trip is printed (``-s``)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from node.delivery.outbox import OutboxPolicy, deliver_pending
from node.ledger import deliveries as store
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination
from tests.delivery.conftest import make_file, make_job, sop_uid
from tests.integration.orthanc import ORTHANC_AE, orthanc_binary, start_orthanc
from tests.support.net import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc is not installed (apt-get install orthanc)"),
]


def test_orthanc_commits_what_the_outbox_sent(tmp_path: Path) -> None:
    commitment_port = free_port()
    # Orthanc reports to the calling AE of the N-ACTION, looked up in its DicomModalities
    orthanc = start_orthanc(tmp_path / "orthanc", {"node": ("AINODE-SR", "127.0.0.1", commitment_port)})
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        repo = Repository(ledger)
        job = make_job(repo)
        files = [make_file(tmp_path / "results") for _ in range(3)]
        destination = Destination(ORTHANC_AE, "127.0.0.1", orthanc.dicom_port, calling_ae="AINODE-SR",
                                  commitment=True)
        for path in files:
            repo.record_delivery(job, str(destination), sop_uid(path), DeliveryState.PENDING, 1.0, path=str(path))
        policy = OutboxPolicy(calling_ae="AINODE", destinations=(destination,), commitment_port=commitment_port,
                              commitment_address="127.0.0.1", commitment_timeout_s=30, timeout_s=30)
        started = time.monotonic()
        outcomes = deliver_pending(repo, time.time(), policy=policy)
        elapsed = time.monotonic() - started
        assert [o.state for o in outcomes] == [DeliveryState.COMMITTED] * 3, (outcomes, orthanc.log[-3000:])
        rows = store.deliveries(repo)
        assert all(r.committed_at is not None and r.commit_requested_at is not None for r in rows)
        print(f"\nOrthanc {orthanc.get_json('/system')['Version']}: 3 objects stored and committed in "
              f"{elapsed:.2f} s; per object C-STORE -> N-EVENT-REPORT "
              + ", ".join(f"{(r.committed_at or 0) - (r.commit_requested_at or 0):.3f} s" for r in rows))
        stored = {orthanc.get_json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                  for i in orthanc.get_json("/instances")}
        assert stored == {sop_uid(p) for p in files}
        assert pydicom.dcmread(files[0]).SOPInstanceUID in stored
    finally:
        ledger.dispose()
        orthanc.stop()
