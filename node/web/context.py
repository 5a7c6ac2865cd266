"""What every route needs (one per app), the client identity written to the audit trail, and authentication
dependencies for the API (Bearer token) and the pages (session cookie)."""

from __future__ import annotations

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


def client_id(request: Request) -> str:
    """``web:<client address>``: who did it, for the audit trail (the proxy's address behind a reverse proxy)."""
    return f"web:{request.client.host if request.client is not None else 'unknown'}"


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
