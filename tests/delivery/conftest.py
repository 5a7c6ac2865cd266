"""Real receiving peers for the delivery tests: the stub Storage SCP of :mod:`tests.support.scp` in this process
(``scp_factory``) and dcmtk's storescp as a subprocess; the small instances and the job they belong to."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage, generate_uid

from node.ledger.db import Ledger
from node.ledger.repository import InstanceHeader, Repository, idempotency_key
from node.values import Destination
from tests.support.net import accepts_connections, free_port
from tests.support.scp import scp_factory
from tests.support.waiting import wait_for

STUDY = "1.2.826.0.1.3680043.8.498.1"


def make_file(directory: Path, sop_class: str = MRImageStorage, name: str | None = None) -> Path:
    """A small, valid single-frame image instance on disk."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
    ds.Modality = "MR" if sop_class == MRImageStorage else "OT"
    ds.PatientName, ds.PatientID = "Test^Delivery", "DELIV1"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk_storescp() -> str | None:
    """dcmtk's storescp (the virtualenv's pynetdicom app of the same name may come first on PATH)."""
    candidates = dict.fromkeys(p for p in (shutil.which("storescp", path="/usr/bin:/usr/local/bin"),
                                           shutil.which("storescp")) if p)
    for exe in candidates:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False)
        if "dcmtk" in (proc.stdout + proc.stderr).lower():
            return exe
    return None


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Destination, Path]]:
    """dcmtk's storescp as a subprocess on a free port (skipped when dcmtk is not installed)."""
    exe = dcmtk_storescp()
    if exe is None:
        pytest.skip("dcmtk storescp is not installed")
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([exe, "--aetitle", "DCMTK", "--output-directory", str(out), str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def up() -> bool:  # accepting connections, or exited
        return proc.poll() is not None or accepts_connections(port)

    try:
        wait_for(up, 15, "storescp accepts connections", interval=0.05)
    except pytest.fail.Exception:
        proc.kill()
        pytest.fail(f"storescp did not start within 15 s: {proc.communicate()[0]!r}")
    if proc.poll() is not None:
        pytest.fail(f"storescp did not start: {proc.communicate()[0]!r}")
    yield Destination("DCMTK", "127.0.0.1", port), out
    proc.terminate()
    proc.wait(timeout=10)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and its key (openssl; skipped without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield Repository(ledger)
    ledger.dispose()


def make_job(repo: Repository) -> int:
    """A study with one instance, marked ready and enqueued: the job the deliveries belong to."""
    header = InstanceHeader(
        study_instance_uid=STUDY, series_instance_uid=STUDY + ".1", sop_instance_uid=STUDY + ".1.1",
        sop_class_uid=MRImageStorage, transfer_syntax_uid=ExplicitVRLittleEndian, modality="MR",
        series_description="t1", series_number=1, frame_of_reference_uid=STUDY + ".9",
    )
    repo.record_instance(header, path="s/a.dcm", size_bytes=10, sha256="0" * 64, calling_ae_title="MOD",
                         peer="127.0.0.1:1", at=1.0)
    study = repo.study(STUDY)
    assert study is not None and repo.mark_ready(study, 2.0)
    job = repo.enqueue(STUDY, idempotency_key(STUDY, study.content_digest), 3.0)
    assert job is not None
    return job.id


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


__all__ = ["SecondaryCaptureImageStorage", "make_file", "make_job", "scp_factory", "sop_uid"]
