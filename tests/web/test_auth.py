"""Token configuration, session cookies and CSRF on the pages, and the ``ainode web`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from node import cli
from node.config import Settings
from node.errors import ConfigError
from node.web.auth import MAX_FAILURES, SESSION_COOKIE, Authenticator, FailedLogins, load_token
from tests.scp.fixtures import FakeClock
from tests.support.net import free_port
from tests.support.waiting import wait_for
from tests.web.conftest import DONE_UID, TOKEN, WebNode

ROOT = Path(__file__).resolve().parents[2]


def test_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no access token configured"):
        load_token(Settings.load(env={}))
    with pytest.raises(ConfigError, match="too short"):
        load_token(Settings.load(env={"AINODE_WEB_TOKEN": "short"}))
    assert load_token(Settings.load(env={"AINODE_WEB_TOKEN": f"  {TOKEN}\n"})) == TOKEN
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert load_token(Settings.load(env={"AINODE_WEB_TOKEN_FILE": str(secret)})) == TOKEN
    with pytest.raises(ConfigError, match="only one of"):
        load_token(Settings.load(env={"AINODE_WEB_TOKEN_FILE": str(secret), "AINODE_WEB_TOKEN": TOKEN}))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_token(Settings.load(env={"AINODE_WEB_TOKEN_FILE": str(tmp_path / "missing")}))


def test_web_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AINODE_WEB_TOKEN", raising=False)
    monkeypatch.delenv("AINODE_WEB_TOKEN_FILE", raising=False)
    assert cli.main(["web", "--spool-dir", str(tmp_path / "spool"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ainode web: error: no access token configured: set AINODE_WEB_TOKEN")
    assert not (tmp_path / "spool").exists()  # it stopped before opening anything


def test_session_cookies_are_signed_and_expire() -> None:
    clock = FakeClock(1000.0)
    auth = Authenticator(TOKEN, max_age_s=60, clock=clock)
    cookie = auth.issue_cookie()
    assert TOKEN not in cookie
    session = auth.session(cookie)
    assert session is not None and auth.csrf_ok(session, session.csrf)
    assert not auth.csrf_ok(session, "0" * 64) and not auth.csrf_ok(session, None)
    expires, nonce, signature = cookie.split(".")
    assert auth.session(f"{int(expires) + 3600}.{nonce}.{signature}") is None  # extended expiry: bad signature
    assert auth.session(f"{expires}.{nonce}.{'0' * 64}") is None
    assert auth.session("garbage") is None and auth.session("") is None and auth.session("é.é.é") is None
    assert Authenticator("another-token-0123456789").session(cookie) is None  # a new token ends sessions
    clock.advance(61)
    assert auth.session(cookie) is None
    assert auth.bearer_ok(None) is None and auth.bearer_ok(f"Bearer {TOKEN}") is True
    assert auth.bearer_ok(f"Basic {TOKEN}") is False and auth.bearer_ok("Bearer ") is False


def test_failed_logins_are_counted_per_address_in_a_sliding_window() -> None:
    clock = FakeClock(1000.0)
    throttle = FailedLogins(max_failures=3, window_s=60.0, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("web:10.0.0.1") == 0.0
        throttle.failed("web:10.0.0.1")
        clock.advance(10)
    assert throttle.retry_after("web:10.0.0.1") == pytest.approx(30.0)  # the first failure leaves at t=60
    assert throttle.retry_after("web:10.0.0.2") == 0.0  # other addresses are not affected
    clock.advance(30.5)
    assert throttle.retry_after("web:10.0.0.1") == 0.0  # one failure left the window: one more try
    throttle.failed("web:10.0.0.1")
    assert throttle.retry_after("web:10.0.0.1") > 0
    throttle.succeeded("web:10.0.0.1")
    assert throttle.retry_after("web:10.0.0.1") == 0.0


def test_wrong_tokens_from_one_address_are_refused_for_a_while(web: WebNode) -> None:
    """The real server: after MAX_FAILURES wrong tokens (page or API) even the right one is answered 429."""
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        for i in range(MAX_FAILURES):
            wrong = (_login(client, "wrong-token-wrong-token") if i % 2 else
                     client.get("/api/studies", headers={"Authorization": "Bearer wrong-token-wrong-token"}))
            assert wrong.status_code == 401
        refused = _login(client, TOKEN)
        assert refused.status_code == 429 and "Too many wrong tokens" in refused.text
        assert int(refused.headers["retry-after"]) > 0 and SESSION_COOKIE not in refused.cookies
        api = client.get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.status_code == 429 and "too many wrong tokens" in api.json()["error"]
        assert client.get("/health").status_code in (200, 503)  # probes are not throttled
    events = [e for e, _, _ in web.events()]
    assert events == ["web-login-failed"] * MAX_FAILURES  # refused attempts are not checked, nor audited


def _login(client: httpx.Client, token: str, next_path: str = "/studies") -> httpx.Response:
    return client.post("/login", data={"token": token, "next": next_path})


def test_pages_need_a_login_and_actions_a_csrf_token(web: WebNode) -> None:
    with httpx.Client(base_url=web.base_url, follow_redirects=False, timeout=10) as client:
        redirect = client.get(f"/studies/{DONE_UID}")
        assert redirect.status_code == 303 and redirect.headers["location"] == f"/login?next=/studies/{DONE_UID}"
        assert client.get("/login").status_code == 200
        wrong = _login(client, "wrong-token-wrong-token")
        assert wrong.status_code == 401 and "Wrong token" in wrong.text and SESSION_COOKIE not in wrong.cookies
        evil = _login(client, TOKEN, "//evil.example/x")
        assert evil.status_code == 303 and evil.headers["location"] == "/studies"  # no open redirect
        set_cookie = evil.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and TOKEN not in set_cookie
        page = client.get(f"/studies/{DONE_UID}")
        assert page.status_code == 200 and DONE_UID in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
        forged = client.post(f"/studies/{DONE_UID}/rerun", data={"csrf": "forged", "after_job": "1"})
        assert forged.status_code == 403
        assert len(web.repo.jobs(DONE_UID)) == 1
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        done = client.post(f"/studies/{DONE_UID}/rerun", data={"csrf": csrf, "after_job": str(web.filled.done_job)})
        assert done.status_code == 303
        new_job = web.repo.jobs(DONE_UID)[-1].id
        assert done.headers["location"] == f"/studies/{DONE_UID}?notice=rerun-created&job={new_job}"
        assert f"Re-run queued as job #{new_job}." in client.get(done.headers["location"]).text
        missing = client.get("/studies/1.2.3")
        assert missing.status_code == 404 and "not in the ledger" in missing.text
        out = client.post("/logout", data={"csrf": csrf})
        assert out.status_code == 303 and client.get("/studies").status_code == 303
    assert [(e, who) for e, who, _ in web.events()] == [
        ("web-login-failed", "web:127.0.0.1"), ("web-login", "web:127.0.0.1"), ("web-rerun", "web:127.0.0.1"),
        ("web-logout", "web:127.0.0.1")]


def test_ainode_web_serves_until_stopped(tmp_path: Path) -> None:
    """The real command in a subprocess: it opens the ledger, serves /health and the API with the token."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    env.update({"AINODE_WEB_TOKEN": TOKEN, "AINODE_SPOOL_DIR": str(tmp_path / "spool"),
                "AINODE_MIN_FREE_DISK_BYTES": "0"})
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "node.cli.web", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def health() -> httpx.Response | None:
        if proc.poll() is not None:
            pytest.fail(f"ainode web exited: {(tmp_path / 'web.log').read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=2)
        except httpx.TransportError:
            return None

    try:
        response = wait_for(health, 60, "ainode web answers /health", interval=0.02)
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
        assert httpx.get(f"{url}/api/studies", timeout=5).status_code == 401
        listed = httpx.get(f"{url}/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert listed.json() == {"studies": []}
        assert (tmp_path / "spool" / "ledger.sqlite3").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    assert proc.returncode in (0, -15)  # uvicorn re-raises the SIGTERM it handled after a clean shutdown
