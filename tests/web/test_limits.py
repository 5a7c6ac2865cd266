"""What an unauthenticated client can make the dashboard do: no unbounded body read, no allow-list values in
/metrics, and, behind a trusted reverse proxy, limits per real client and a ``Secure`` session cookie."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from node.web.app import MAX_BODY_BYTES
from node.web.auth import MAX_FAILURES, SESSION_COOKIE
from tests.web.conftest import TOKEN, WebNode

LOCAL_PROXY = (ipaddress.ip_network("127.0.0.1/32"),)


def _login(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    return client.post("/login", data={"token": token, "next": "/studies"}, headers=headers)


def _raw_post(base_url: str, path: str, head: bytes, chunk: bytes, chunks: int) -> bytes:
    """POST a chunked body of ``chunks`` x ``chunk`` over a raw socket; what the server answered (it may answer,
    and close, before the body is all sent)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head +
                     b"Transfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n")
        try:
            for _ in range(chunks):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: it had answered already
        answer = b""
        while chunk_in := sock.recv(65536):
            answer += chunk_in
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
        return answer


def test_a_large_login_body_is_refused_unread(web: WebNode) -> None:
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=30) as client:
        started = time.monotonic()
        declared = client.post("/login", content=b"token=" + b"x" * (8 * 1024 * 1024),
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert declared.status_code == 413 and "too large" in declared.json()["error"]
        assert time.monotonic() - started < 10
    # chunked, no Content-Length: 400 MB announced in 1 MB chunks; the answer comes after the first ones
    answer = _raw_post(web.base_url, "/login", b"", b"x" * (1024 * 1024), 400)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        assert _login(client, TOKEN).status_code == 303  # the server is fine, a normal login works
        api = client.post("/api/studies/x/rerun", content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}",
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        assert api.status_code == 413  # the API too, whose JSON body FastAPI reads before checking the token


def test_open_metrics_do_not_name_the_calling_ae_titles(web: WebNode) -> None:
    with web.api(token=None) as client:
        text = client.get("/metrics").text
    assert "MODALITY" not in text and "calling_ae_title" not in text
    assert f"ainode_instances_received_total {float(web.filled.instances)}" in text
    with web.api() as client:
        assert 'calling_ae_title="MODALITY"' in client.get("/metrics").text
    with web.api(token="wrong-token-wrong-token") as client:
        assert client.get("/metrics").status_code == 401
    assert [e for e, _, _ in web.events()] == ["web-login-failed"]


def test_behind_a_trusted_proxy_limits_are_per_client_and_the_cookie_is_secure(
    node_factory: Callable[..., WebNode],
) -> None:
    web = node_factory(web_trusted_proxies=LOCAL_PROXY)
    attacker = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    operator = {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        for _ in range(MAX_FAILURES):
            assert _login(client, "wrong-token-wrong-token", **attacker).status_code == 401
        assert _login(client, TOKEN, **attacker).status_code == 429  # this client is throttled...
        ok = _login(client, TOKEN, **operator)  # ...not every operator behind the same proxy
    assert ok.status_code == 303
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "secure" in cookie.lower().split("; ")
    peers = {peer for _, peer, _ in web.events()}
    assert peers == {"web:203.0.113.7", "web:198.51.100.20"}  # the audit names the real clients


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(web: WebNode) -> None:
    """Without trusted proxies a client cannot pick its own address (and escape the limit) or fake HTTPS."""
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        for n in range(MAX_FAILURES):
            forged = {"X-Forwarded-For": f"192.0.2.{n}", "X-Forwarded-Proto": "https"}
            assert _login(client, "wrong-token-wrong-token", **forged).status_code == 401
        assert _login(client, TOKEN, **{"X-Forwarded-For": "192.0.2.200"}).status_code == 429
    assert {peer for _, peer, _ in web.events()} == {"web:127.0.0.1"}


def test_a_forged_left_part_of_x_forwarded_for_is_not_believed(node_factory: Callable[..., WebNode]) -> None:
    web = node_factory(web_trusted_proxies=LOCAL_PROXY)
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        # the client wrote "10.9.9.9", the proxy appended the address it saw
        assert _login(client, "wrong-token-wrong-token", **{"X-Forwarded-For": "10.9.9.9, 203.0.113.9"}
                      ).status_code == 401
    assert [peer for _, peer, _ in web.events()] == ["web:203.0.113.9"]


@pytest.mark.parametrize("secure_setting", [False, True])
def test_secure_cookie_setting(node_factory: Callable[..., WebNode], secure_setting: bool) -> None:
    web = node_factory(web_secure_cookies=secure_setting)
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        cookie = _login(client, TOKEN).headers["set-cookie"]
    assert ("secure" in cookie.lower().split("; ")) is secure_setting
