"""What every route needs (one per app), the client identity written to the audit trail, and authentication
dependencies for the API (Bearer token) and the pages (session cookie)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request
from prometheus_client.registry import CollectorRegistry

from node.config import Settings
from node.jobs.broker import BrokerConfig
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.values import Network
from node.web.actions import Actions
from node.web.auth import SESSION_COOKIE, Authenticator, Session
from node.web.errors import NotAuthenticatedError, TooManyAttemptsError, WebError
from node.web.queries import Queries


@dataclass
class WebContext:
    settings: Settings
    ledger: Ledger
    repo: Repository
    auth: Authenticator
    queries: Queries
    actions: Actions
    broker: BrokerConfig
    registry: CollectorRegistry
    clock: Callable[[], float] = time.time
    health_timeout_s: float = 2.0


class LoginRequiredError(WebError):
    """A page was asked for without a valid session: the browser is sent to the login page."""

    status_code = 303
    default_message = "log in first"

    def __init__(self, next_path: str) -> None:
        super().__init__()
        self.location = f"/login?next={quote(next_path, safe='/')}"


def context(request: Request) -> WebContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, WebContext)
    return ctx


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def _header_values(request: Request, name: str) -> list[str]:
    """Every comma-separated value of every ``name`` header, in order (proxies append to the right)."""
    return [v.strip() for line in request.headers.getlist(name) for v in line.split(",") if v.strip()]


def client_address(request: Request) -> str:
    """The client's address: the TCP peer, or, when the peer is one of ``web_trusted_proxies``, the right-most
    ``X-Forwarded-For`` address that is not itself a trusted proxy (the left part of the header is whatever the
    client wrote, so it is never believed). Without trusted proxies the header is ignored."""
    peer = request.client.host if request.client is not None else "unknown"
    proxies = context(request).settings.web_trusted_proxies
    if not proxies or not _trusted(peer, proxies):
        return peer
    for address in reversed(_header_values(request, "x-forwarded-for")):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return peer  # a malformed hop: trust nothing beyond the proxy
        if not _trusted(address, proxies):
            return address
    return peer


def client_id(request: Request) -> str:
    """``web:<client address>``: who did it, for the audit trail and the login limit (:func:`client_address`)."""
    return f"web:{client_address(request)}"


def is_https(request: Request) -> bool:
    """Whether the browser reached us over HTTPS: directly, or as a trusted proxy's ``X-Forwarded-Proto`` says."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client is not None else ""
    proxies = context(request).settings.web_trusted_proxies
    if not proxies or not _trusted(peer, proxies):
        return False
    schemes = _header_values(request, "x-forwarded-proto")
    return bool(schemes) and schemes[-1].lower() == "https"


def api_auth(request: Request) -> str:
    """FastAPI dependency of every ``/api`` route: a right Bearer token, else 401 (a wrong one is audited)."""
    ctx = context(request)
    who = client_id(request)
    if request.headers.get("authorization") and (wait := ctx.auth.failed_logins.retry_after(who)):
        raise TooManyAttemptsError(wait)
    verdict = ctx.auth.bearer_ok(request.headers.get("authorization"))
    if verdict is None:
        raise NotAuthenticatedError()
    if not verdict:
        ctx.auth.failed_logins.failed(who)
        ctx.repo.audit("web-login-failed", ctx.clock(), peer=who,
                       detail=f"wrong Bearer token on {request.method} {request.url.path}")
        raise NotAuthenticatedError("wrong token")
    return who


def page_session(request: Request) -> Session:
    """FastAPI dependency of every page: the session of a valid cookie, else a redirect to the login page."""
    session = context(request).auth.session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequiredError(target)
    return session
