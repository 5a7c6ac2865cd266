"""Server wiring: association limits, TLS, and the ``python -m node.scp.server`` entry point."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom import AE

from node.config import Settings
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.scp.contexts import STORAGE_SOP_CLASSES, VERIFICATION
from node.scp.server import build_ae
from tests.scp.fixtures import FakeClock, ListenerFactory, associate

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_build_ae_applies_settings() -> None:
    settings = Settings.load(env={}, overrides={"ae_title": "NODE1", "max_associations": 3, "max_pdu": 65536,
                                                "accepted_calling_aets": "PACS"})
    ae = build_ae(settings)
    assert ae.ae_title == "NODE1"
    assert ae.maximum_associations == 3 and ae.maximum_pdu_size == 65536
    assert ae.require_calling_aet == ["PACS"] and ae.require_called_aet
    accepted = {str(c.abstract_syntax) for c in ae.supported_contexts}
    assert accepted == {str(u) for u in STORAGE_SOP_CLASSES.values()} | {str(VERIFICATION)}


def test_max_associations_limit(start: ListenerFactory, sqlite_url: str) -> None:
    listener = start(sqlite_url, FakeClock(), max_associations=1)
    first = associate(listener.port)
    assert first.is_established
    try:
        second = associate(listener.port)
        assert second.is_rejected
    finally:
        first.release()


def _self_signed(folder: Path, openssl: str) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_echo(start: ListenerFactory, sqlite_url: str, tmp_path: Path, require_tool) -> None:
    cert, key = _self_signed(tmp_path, require_tool("openssl"))
    listener = start(sqlite_url, FakeClock(), tls_cert=cert, tls_key=key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="PACS")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="AINODE", tls_args=(client, "localhost"))
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    plain = associate(listener.port)  # no TLS: the handshake fails, nothing is accepted
    assert not plain.is_established


def test_mutual_tls_requires_a_client_certificate(
    start: ListenerFactory, sqlite_url: str, tmp_path: Path, require_tool
) -> None:
    cert, key = _self_signed(tmp_path, require_tool("openssl"))  # self-signed: it is its own CA
    listener = start(sqlite_url, FakeClock(), tls_cert=cert, tls_key=key, tls_ca=cert)

    def echo(with_certificate: bool) -> bool:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        if with_certificate:
            client.load_cert_chain(str(cert), str(key))
        ae = AE(ae_title="PACS")
        ae.add_requested_context(VERIFICATION)
        ae.acse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AINODE", tls_args=(client, "localhost"))
        if not assoc.is_established:
            return False
        ok = int(assoc.send_c_echo().Status) == 0
        assoc.release()
        return ok

    assert not echo(with_certificate=False)
    assert echo(with_certificate=True)


def test_module_entry_point(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "node.scp.server", "--port", "0", "--bind-address", "127.0.0.1",
         "--spool-dir", str(spool), "--ae-title", "NODEMAIN"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # returns "" if the process dies first
        assert process.stderr is not None
        assert line.startswith("listening as NODEMAIN on 127.0.0.1:"), line or process.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        assoc = associate(port, called="NODEMAIN")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    ledger = Ledger.open(f"sqlite:///{spool / 'ledger.sqlite3'}")
    try:
        assert [e.event for e in Repository(ledger).audit_trail()] == ["echo"]
    finally:
        ledger.dispose()


def test_module_entry_point_bad_setting(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AINODE_PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "node.scp.server", "--spool-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "AINODE_PORT" in result.stderr


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2.3.4" + ".5" * 40, "1.2.abc"])
def test_spool_never_uses_unchecked_uids(tmp_path: Path, bad: str) -> None:
    from node.errors import CorruptInstanceError
    from node.spool import Spool

    spool = Spool(tmp_path / "spool")
    with pytest.raises(CorruptInstanceError):
        spool.relative_path("1.2.3", "1.2.3.4", bad)
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert all(len(part) in (32, 36) and "1.2.3" not in part for part in relative.split("/"))
