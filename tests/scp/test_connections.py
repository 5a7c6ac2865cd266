"""Connections: idle sockets (plain and TLS) never lock a sender out; limits per peer and in total, with reasons.

Linux routes all of 127.0.0.0/8 to the loopback interface, so "another host" is a socket bound to 127.0.0.2.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from node.scp.contexts import VERIFICATION
from node.scp.server import ListenerHandle
from tests.scp.fixtures import FakeClock, ListenerFactory, associate, send
from tests.support.studies import SynthCase

ATTACKER = "127.0.0.2"


@contextmanager
def idle_sockets(port: int, count: int, source: str = ATTACKER) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that never send a byte."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        time.sleep(0.3)  # let the listener accept them all
        yield sockets


def echo(port: int, *, calling: str = "PACS", source: str | None = None, tls: ssl.SSLContext | None = None) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE", bind_address=(source or "127.0.0.1", 0),
                         tls_args=(tls, "localhost") if tls else None)
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok


def events(listener: ListenerHandle, name: str) -> list[str]:
    return [e.detail or "" for e in listener.repository.audit_trail() if e.event == name]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_idle_sockets_from_another_host_do_not_lock_out_the_pacs(start: ListenerFactory, sqlite_url: str) -> None:
    listener = start(sqlite_url, FakeClock(), accepted_calling_aets="PACS")
    with idle_sockets(listener.port, 12):
        started = time.monotonic()
        assert echo(listener.port)
        assert time.monotonic() - started < 5


def test_idle_sockets_from_the_same_host_do_not_lock_it_out(start: ListenerFactory, sqlite_url: str) -> None:
    """The oldest idle connection of a peer is closed when it opens one more than max_associations_per_peer."""
    listener = start(sqlite_url, FakeClock(), max_associations_per_peer=4)
    with idle_sockets(listener.port, 12, source="127.0.0.1") as sockets:
        assert echo(listener.port)
        sockets[0].settimeout(5)
        assert sockets[0].recv(1) == b""  # the oldest was closed
    assert wait_for(lambda: any("max_associations_per_peer" in d for d in events(listener, "connection-closed")))


def test_a_silent_connection_is_closed_after_the_handshake_timeout(start: ListenerFactory, sqlite_url: str) -> None:
    listener = start(sqlite_url, FakeClock(), handshake_timeout_s=1)
    with idle_sockets(listener.port, 1) as (sock,):
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 5
    assert wait_for(lambda: any("handshake_timeout_s" in d for d in events(listener, "connection-closed")))


def test_a_slow_association_request_is_cut_off(start: ListenerFactory, sqlite_url: str) -> None:
    """The A-ASSOCIATE-RQ must be complete within the handshake timeout, not just started."""
    listener = start(sqlite_url, FakeClock(), handshake_timeout_s=1)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x44")  # an A-ASSOCIATE-RQ header, then nothing
        started = time.monotonic()
        assert sock.recv(64) in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")  # closed (or aborted)
        assert time.monotonic() - started < 5
    assert echo(listener.port)


def test_associations_per_peer_and_in_total(start: ListenerFactory, sqlite_url: str) -> None:
    listener = start(sqlite_url, FakeClock(), max_associations=3, max_associations_per_peer=2)
    open_: list[Association] = []
    try:
        for _ in range(2):
            open_.append(associate(listener.port))
            assert open_[-1].is_established
        assert not echo(listener.port)  # a third from 127.0.0.1
        assert echo(listener.port, source=ATTACKER)  # another host still gets in
        ae = AE(ae_title="OTHER")
        ae.add_requested_context(VERIFICATION)
        open_.append(ae.associate("127.0.0.1", listener.port, ae_title="AINODE", bind_address=(ATTACKER, 0)))
        assert open_[-1].is_established
        assert not echo(listener.port, source="127.0.0.3")  # 3 open in all
    finally:
        for assoc in open_:
            assoc.release()
    reasons = events(listener, "association-rejected")
    assert any("max_associations_per_peer (2)" in r for r in reasons)
    assert any("max_associations (3)" in r for r in reasons)


def test_rejections_are_audited_with_the_reason(start: ListenerFactory, sqlite_url: str) -> None:
    listener = start(sqlite_url, FakeClock(), accepted_calling_aets="PACS")
    assert not echo(listener.port, calling="ROGUE")
    assoc = AE(ae_title="PACS")
    assoc.add_requested_context(VERIFICATION)
    assert assoc.associate("127.0.0.1", listener.port, ae_title="SOMEONE").is_rejected
    # the A-ASSOCIATE-RJ is sent before the rejection's audit row is written: wait for both rows
    wait_for(lambda: len(events(listener, "association-rejected")) >= 2)
    reasons = events(listener, "association-rejected")
    assert any("'ROGUE' is not in accepted_calling_aets" in r for r in reasons), reasons
    assert any("called AE title 'SOMEONE'" in r for r in reasons), reasons


def _self_signed(folder: Path, openssl: str) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_with_tls_an_idle_connection_blocks_nobody(
    start: ListenerFactory, sqlite_url: str, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    cert, key = _self_signed(tmp_path, require_tool("openssl"))
    listener = start(sqlite_url, FakeClock(), tls_cert=cert, tls_key=key, handshake_timeout_s=2)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    with idle_sockets(listener.port, 3) as (first, *_):
        started = time.monotonic()
        assert echo(listener.port, tls=client)
        assert time.monotonic() - started < 5
        first.settimeout(10)
        assert first.recv(1) == b""  # closed at the handshake deadline
    assert wait_for(lambda: any("TLS handshake" in d for d in events(listener, "connection-closed")))


@pytest.mark.parametrize("count", [10, 12])
def test_idle_sockets_then_a_store_still_works(
    start: ListenerFactory, sqlite_url: str, count: int, synth_case: SynthCase
) -> None:
    listener = start(sqlite_url, FakeClock())
    with idle_sockets(listener.port, count):
        assert send(listener.port, synth_case.seg) == [0]
