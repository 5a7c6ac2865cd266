"""Access to the dashboard: one configured token, never a default.

* The token comes from ``AINODE_WEB_TOKEN`` or from the file named by ``AINODE_WEB_TOKEN_FILE`` (a Docker
  secret); with neither (or an empty / short one) ``ainode web`` refuses to start.
* The JSON API takes ``Authorization: Bearer <token>``; tokens are compared in constant time (HMAC digests of
  equal length, :func:`hmac.compare_digest`).
* After 10 wrong tokens from one client address within 5 minutes, that address is answered 429 (with
  ``Retry-After``) without its token being checked, until the oldest failure is 5 minutes old.
* The browser logs in once with the token and gets a session cookie ``<expiry>.<nonce>.<hmac>`` signed with a
  key derived from the token (the token itself never sits in the cookie; changing the token ends all sessions).
  The cookie is HttpOnly and SameSite=Strict; every POST form of the pages carries a CSRF token derived from
  the session's nonce, checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.config import Settings
from node.errors import ConfigError

TOKEN_ENV = "AINODE_WEB_TOKEN"
TOKEN_FILE_ENV = "AINODE_WEB_TOKEN_FILE"
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "ainode_session"
SESSION_MAX_AGE_S = 12 * 3600
MAX_FAILURES = 10  # wrong tokens from one client address within FAILURE_WINDOW_S before it is refused (429)
FAILURE_WINDOW_S = 300.0


def load_token(settings: Settings) -> str:
    """The configured token (``web_token_file`` or ``web_token``); :class:`ConfigError` if none."""
    if settings.web_token_file is not None:
        try:
            token = settings.web_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{TOKEN_FILE_ENV}: {settings.web_token_file} cannot be read: {exc.strerror}"
            ) from exc
        where = f"the file {settings.web_token_file} ({TOKEN_FILE_ENV})"
    else:
        token, where = (settings.web_token or "").strip(), TOKEN_ENV
    if not token:
        raise ConfigError(
            f"no access token configured: set {TOKEN_ENV} or {TOKEN_FILE_ENV} (there is no default password; "
            "e.g. AINODE_WEB_TOKEN=$(openssl rand -hex 24))"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the access token in {where} is too short: use at least {MIN_TOKEN_LENGTH} characters")
    return token


class FailedLogins:
    """Wrong tokens per client address in a sliding window: after ``max_failures`` the address is refused until
    its oldest failure leaves the window, so the token cannot be guessed at network speed. In memory, per process:
    a restart forgets, which only gives an attacker another ``max_failures`` tries. Thread-safe enough for the
    counters it keeps (one list per address, appended and trimmed under the GIL)."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def _recent(self, who: str) -> list[float]:
        cutoff = self._clock() - self.window_s
        recent = [t for t in self._failures.get(who, []) if t > cutoff]
        if recent:
            self._failures[who] = recent
        else:
            self._failures.pop(who, None)
        return recent

    def retry_after(self, who: str) -> float:
        """Seconds ``who`` must wait before its next attempt is even checked; 0 when it may try now."""
        recent = self._recent(who)
        if len(recent) < self.max_failures:
            return 0.0
        return max(recent[-self.max_failures] + self.window_s - self._clock(), 1.0)

    def failed(self, who: str) -> None:
        self._failures.setdefault(who, []).append(self._clock())
        if len(self._failures) > 10_000:  # many addresses: drop those with nothing recent
            for address in list(self._failures):
                self._recent(address)

    def succeeded(self, who: str) -> None:
        self._failures.pop(who, None)


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str


class Authenticator:
    """Checks tokens and issues / verifies the signed session cookies and CSRF tokens."""

    def __init__(self, token: str, *, max_age_s: int = SESSION_MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"the access token must have at least {MIN_TOKEN_LENGTH} characters")
        self._token_digest = self._digest(token)
        self._key = hmac.new(token.encode("utf-8"), b"ainode-web-session-v1", hashlib.sha256).digest()
        self.max_age_s = max_age_s
        self._clock = clock
        self.failed_logins = FailedLogins(clock=clock)

    @staticmethod
    def _digest(value: str) -> bytes:
        return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()

    def token_ok(self, candidate: str | None) -> bool:
        """Constant time in the candidate's content (both sides are SHA-256 digests of equal length)."""
        return candidate is not None and hmac.compare_digest(self._digest(candidate), self._token_digest)

    def bearer_ok(self, authorization: str | None) -> bool | None:
        """``None`` when no Bearer credentials were sent, else whether they are right."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        return self.token_ok(value.strip())

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).hexdigest()

    def issue_cookie(self) -> str:
        expires = int(self._clock()) + self.max_age_s
        payload = f"{expires}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._sign(payload)}"

    def session(self, cookie: str | None) -> Session | None:
        """The session of a valid, unexpired cookie, else ``None``."""
        if not cookie or not cookie.isascii():
            return None
        payload, _, signature = cookie.rpartition(".")
        expires, _, nonce = payload.partition(".")
        if not nonce or not expires.isdigit():
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        if int(expires) < self._clock():
            return None
        return Session(nonce, self.csrf_token(nonce))

    def csrf_token(self, nonce: str) -> str:
        return self._sign(f"csrf:{nonce}")

    def csrf_ok(self, session: Session, candidate: str | None) -> bool:
        return candidate is not None and candidate.isascii() and hmac.compare_digest(session.csrf, candidate)
