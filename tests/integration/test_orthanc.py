"""Interoperability with a real PACS: Orthanc sends a study to the node by C-STORE, and the node's Structured
Report comes back to Orthanc by C-STORE (ORTHANC -> AINODE -> ORTHANC), checked through Orthanc's REST API; the
worker asks Orthanc for Storage Commitment and the ledger shows every result committed."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from node.cli.serve import settings_from_args, start_node
from node.ledger import deliveries as store
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.sr.validate import validate_sr
from node.synth.generate import generate_cohort
from node.values import parse_destination
from tests.integration.orthanc import ORTHANC_AE, Orthanc, orthanc_binary, start_orthanc
from tests.support.net import free_port
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc is not installed (apt-get install orthanc)"),
]

SR_TIMEOUT_S = 300.0


def _sr_instances(orthanc: Orthanc, study_id: str) -> list[str]:
    """Orthanc IDs of the instances of every SR series of the study."""
    ids: list[str] = []
    for series in orthanc.get_json(f"/studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") == "SR":
            ids.extend(series["Instances"])
    return ids


def test_orthanc_sends_study_and_receives_sr(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "study", 1, 7, size="small")
    files = sorted((tmp_path / "study" / "case0000").rglob("*.dcm"))
    assert files
    source_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    node_port, commitment_port = free_port(), free_port()
    # the node's listener (studies) and its results sender (Storage Commitment reports) as two modalities
    orthanc = start_orthanc(tmp_path / "orthanc", {"AINODE": ("AINODE", "127.0.0.1", node_port),
                                                   "AINODE-SR": ("AINODE-SR", "127.0.0.1", commitment_port)})
    node = None
    try:
        environ = dict(os.environ)
        # always the embedded broker
        settings = replace(settings_from_args(argparse.Namespace(
            config=None, ae_title="AINODE", port=node_port,
            destination=[f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}"], spool_dir=tmp_path / "spool",
            database=None, quiet_period=2.0, broker=None, models=None), environ), broker_url=None,
            destinations=(parse_destination(f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}?calling_ae=AINODE-SR"
                                            "&commitment=yes", "test"),),
            commitment_port=commitment_port, allow_demo_models=True)  # the shipped demonstration models
        node = start_node(settings)

        study_ids = {orthanc.upload(path)["ParentStudy"] for path in files}
        assert len(study_ids) == 1
        study_id = study_ids.pop()
        assert orthanc.get_json(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"] == source_uid
        assert not _sr_instances(orthanc, study_id)

        # Orthanc, as the PACS, pushes the study to the node (C-STORE SCU -> our listener)
        answer = orthanc.post_json("/modalities/AINODE/store", study_id, timeout=SR_TIMEOUT_S)
        assert int(answer.get("FailedInstancesCount", 0)) == 0, answer
        assert int(answer["InstancesCount"]) == len(files), answer

        worker_log = node.settings.spool_dir / "worker.log"

        def stored_reports() -> list[str]:
            reports = _sr_instances(orthanc, study_id)
            if not reports:
                assert node is not None and node.worker is not None and node.worker.poll() is None, (
                    worker_log.read_text(errors="replace")[-4000:])
            return reports

        reports = wait_for(stored_reports, SR_TIMEOUT_S, lambda: (
            "no SR stored in Orthanc; worker log:\n" + worker_log.read_text(errors="replace")[-4000:]
            + "\nOrthanc log:\n" + orthanc.log[-4000:]), interval=0.5)

        assert len(reports) == 1
        ledger = Ledger.open(node.settings.effective_database_url)
        try:
            def committed() -> bool:
                rows = store.deliveries(Repository(ledger))
                return bool(rows) and all(r.state is DeliveryState.COMMITTED for r in rows)

            # the worker asked Orthanc, which reported on a new association
            wait_for(committed, SR_TIMEOUT_S, lambda: (
                f"not committed: {store.deliveries(Repository(ledger))}; worker log:\n"
                + (node.settings.spool_dir / "worker.log").read_text(errors="replace")[-4000:]), interval=0.5)
        finally:
            ledger.dispose()
        sr_path = tmp_path / "sr.dcm"
        sr_path.write_bytes(orthanc.request("GET", f"/instances/{reports[0]}/file"))
        assert validate_sr(sr_path) == []
        sr = pydicom.dcmread(sr_path)
        assert sr.Modality == "SR"
        assert str(sr.StudyInstanceUID) == source_uid
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()
