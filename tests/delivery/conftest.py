"""Real receiving peers for the delivery tests: a pynetdicom Storage SCP in this process and dcmtk's storescp."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt

from node.ledger.db import Ledger
from node.ledger.repository import InstanceHeader, Repository, idempotency_key
from node.values import Destination

STUDY = "1.2.826.0.1.3680043.8.498.1"
VERIFICATION = "1.2.840.10008.1.1"


def free_port() -> int:
    """A port nothing listens on right now (bound and released: the OS will not hand it out again soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class StoreSCP:
    """A pynetdicom Storage SCP on a free port that writes what it receives and answers ``status``."""

    directory: Path
    port: int
    ae_title: str = "PACS"
    status: int = 0x0000
    received: list[str] = field(default_factory=list)
    server: object = None

    @property
    def destination(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.port)

    def _on_store(self, event: evt.Event) -> int:
        if self.status in (0x0000, 0xB000):
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.directory.mkdir(parents=True, exist_ok=True)
            ds.save_as(self.directory / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            self.received.append(str(ds.SOPInstanceUID))
        return self.status

    def start(self, sop_classes: list[str] | None = None, *, ssl_context: ssl.SSLContext | None = None,
              calling_aets: list[str] | None = None) -> StoreSCP:
        """Listen; ``ssl_context``: TLS only; ``calling_aets``: reject other calling AE titles (a filtering PACS)."""
        ae = AE(ae_title=self.ae_title)
        if sop_classes is None:
            ae.supported_contexts = StoragePresentationContexts
        else:
            for uid in sop_classes:
                ae.add_supported_context(uid)
        ae.add_supported_context(VERIFICATION)
        ae.require_calling_aet = calling_aets or []
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=ssl_context,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()  # type: ignore[attr-defined]
            self.server = None


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """``scp_factory(port=None, status=0, sop_classes=None, start=True, ssl_context=None, calling_aets=None)``;
    all stopped at teardown."""
    made: list[StoreSCP] = []

    def factory(port: int | None = None, status: int = 0, sop_classes: list[str] | None = None,
                start: bool = True, ssl_context: ssl.SSLContext | None = None,
                calling_aets: list[str] | None = None) -> StoreSCP:
        scp = StoreSCP(tmp_path / f"received-{len(made)}", port or free_port(), status=status)
        made.append(scp)
        return scp.start(sop_classes, ssl_context=ssl_context, calling_aets=calling_aets) if start else scp

    yield factory
    for scp in made:
        scp.stop()


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
    deadline = time.monotonic() + 15
    while True:  # wait until it accepts connections (bounded)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"storescp did not start: {proc.communicate()[0]!r}")
            time.sleep(0.05)
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


__all__ = ["SecondaryCaptureImageStorage", "make_file", "make_job", "sop_uid"]
