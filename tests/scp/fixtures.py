"""Fixtures and helpers shared by tests/scp and tests/ledger: ledgers on SQLite and PostgreSQL, in-process
listeners on free ports, a fake clock and a pynetdicom SCU sender (the synthetic study is
:func:`tests.support.studies.synth_case`)."""

from __future__ import annotations

import io
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config, transport
from pynetdicom.association import Association

from node.config import Settings
from node.delivery.scu import wait_reactor_resumed
from node.jobs.dispatcher import dispatcher_factory
from node.ledger.db import Ledger
from node.scp.contexts import STORAGE_SOP_CLASSES, VERIFICATION
from node.scp.server import ListenerHandle, start_listener

T0 = 1_000_000.0
SCU_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
)


class FakeClock:
    """A clock the tests move by hand (no sleeping)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def sop_instance_uid(path: Path) -> str:
    """The SOP Instance UID in the header of the file at ``path``."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its preamble and file meta (the dataset as sent over the network)."""
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    return raw[stream.tell():]


def _postgres_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"ainode_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True,
                                connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        yield from _postgres_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


ListenerFactory = Callable[..., ListenerHandle]
_create_socket = transport.AssociationSocket._create_socket


def _nodelay_socket(self: transport.AssociationSocket, address: transport.AddressInformation) -> socket.socket:
    """The test SCU's socket with Nagle off (as dcmtk with TCP_NODELAY=1): ~3x faster small C-STOREs."""
    sock = _create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListenerFactory]:
    """Start listeners on free ports (port 0) with a spool under tmp_path; all are stopped at teardown.

    ``start(url, clock, **settings)``: the ledger at ``url`` (opened per listener and disposed on stop); a
    ``send_task=`` keyword is passed to :func:`start_listener` (the listener dispatches ready studies itself).
    The test SCU sends files as they are on disk (pynetdicom's chunked send: no decode/re-encode), so the
    spool can be compared byte for byte and corrupt files reach the listener unchanged.
    """
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(transport.AssociationSocket, "_create_socket", _nodelay_socket)
    handles: list[tuple[ListenerHandle, Ledger]] = []

    def factory(url: str, clock: Callable[[], float], **fields: object) -> ListenerHandle:
        values: dict[str, object] = {
            "port": 0, "bind_address": "127.0.0.1", "spool_dir": tmp_path / "spool", "min_free_disk_bytes": 0,
            "database_url": url, "quiet_period_s": 60, "force_complete_s": 600,
        }
        send_task = fields.pop("send_task", None)
        values.update(fields)
        settings = Settings.load(env={}, overrides=values)
        ledger = Ledger.open(url)
        dispatcher = None if send_task is None else dispatcher_factory(settings, send_task)  # type: ignore[arg-type]
        handle = start_listener(settings, ledger, clock=clock, dispatcher=dispatcher)
        handles.append((handle, ledger))
        return handle

    yield factory
    for handle, ledger in handles:
        handle.stop()
        ledger.dispose()


def associate(port: int, calling: str = "PACS", called: str = "AINODE") -> Association:
    ae = AE(ae_title=calling)
    for uid in STORAGE_SOP_CLASSES.values():
        for syntax in SCU_TRANSFER_SYNTAXES:  # one context each, so any of them can be used per instance
            ae.add_requested_context(uid, [syntax])
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title=called)


def send(port: int, files: Sequence[Path], calling: str = "PACS") -> list[int]:
    """C-STORE ``files`` (their raw dataset bytes, no re-encoding) in one association; the response statuses."""
    assoc = associate(port, calling)
    assert assoc.is_established, "association was not accepted"
    try:
        statuses = []
        for path in files:
            wait_reactor_resumed(assoc)  # pynetdicom's pause/resume race under load (node.delivery.scu)
            response = assoc.send_c_store(path)
            statuses.append(int(response.Status) if "Status" in response else -1)
        return statuses
    finally:
        assoc.release()
