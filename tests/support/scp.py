"""The stub Storage SCP the tests use as a PACS: a pynetdicom AE in this process, on a loopback port.

It answers every C-STORE with ``status`` and, when that status means stored (Success or the Warning
0xB000), writes the dataset under ``directory`` as ``<SOP Instance UID>.dcm`` and records it: ``received``
(SOP Instance UIDs) and ``files`` (the paths written), in the order of arrival, one entry per C-STORE.
It also answers C-ECHO.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, StoragePresentationContexts, evt

from node.values import Destination
from tests.support.net import LOOPBACK, free_port

VERIFICATION = "1.2.840.10008.1.1"
STORED = (0x0000, 0xB000)  # the statuses under which a peer keeps the instance


@dataclass
class StoreSCP:
    """A Storage SCP writing what it receives to ``directory`` and answering ``status``.

    ``port`` 0 lets the OS choose one when :meth:`start` binds (read ``port`` afterwards); give a port
    (:func:`~tests.support.net.free_port`) to know the address before anything listens there.
    ``sop_classes`` limits the storage SOP classes it accepts (default: every storage SOP class pynetdicom knows).
    """

    directory: Path
    port: int = 0
    ae_title: str = "PACS"
    status: int = 0x0000
    sop_classes: Sequence[str] | None = None
    received: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    bind_address: str = LOOPBACK  # "0.0.0.0": reachable from containers too (tests/deploy/test_docker.py)

    @property
    def destination(self) -> Destination:
        return Destination(self.ae_title, LOOPBACK, self.port)

    def _on_store(self, event: evt.Event) -> int:
        if self.status in STORED:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = self.directory / f"{ds.SOPInstanceUID}.dcm"
            with self._lock:
                self.directory.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                self.files.append(path)
                self.modalities.append(str(getattr(ds, "Modality", "")))
                self.received.append(str(ds.SOPInstanceUID))
        return self.status

    def start(self, sop_classes: Sequence[str] | None = None, *, ssl_context: ssl.SSLContext | None = None,
              calling_aets: list[str] | None = None) -> StoreSCP:
        """Listen (not blocking); ``sop_classes`` overrides the field of the same name; ``ssl_context``: TLS only;
        ``calling_aets``: reject other calling AE titles (a filtering PACS)."""
        if sop_classes is not None:
            self.sop_classes = sop_classes
        ae = AE(ae_title=self.ae_title)
        if self.sop_classes is None:
            ae.supported_contexts = StoragePresentationContexts
        else:
            for uid in self.sop_classes:
                ae.add_supported_context(uid)
        ae.add_supported_context(VERIFICATION)
        ae.require_calling_aet = calling_aets or []
        self.server = ae.start_server((self.bind_address, self.port), block=False, ssl_context=ssl_context,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])
        return self

    def structured_reports(self) -> list[Path]:
        """The files received with Modality SR, in the order of arrival."""
        with self._lock:
            return [path for path, modality in zip(self.files, self.modalities, strict=True) if modality == "SR"]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """``scp_factory(port=None, status=0, sop_classes=None, start=True, ssl_context=None, calling_aets=None)``: a
    :class:`StoreSCP` on ``port`` (a free port by default) writing under ``tmp_path/received-<n>``; all stopped at
    teardown."""
    made: list[StoreSCP] = []

    def factory(port: int | None = None, status: int = 0, sop_classes: list[str] | None = None,
                start: bool = True, ssl_context: ssl.SSLContext | None = None,
                calling_aets: list[str] | None = None) -> StoreSCP:
        scp = StoreSCP(tmp_path / f"received-{len(made)}", port or free_port(), status=status, sop_classes=sop_classes)
        made.append(scp)
        return scp.start(ssl_context=ssl_context, calling_aets=calling_aets) if start else scp

    yield factory
    for scp in made:
        scp.stop()
