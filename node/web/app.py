"""The FastAPI application: :func:`create_app` wires the ledger, broker, token and routes together.

Open routes: ``/health`` (JSON, 200 when every check passes, else 503), ``/metrics`` (Prometheus text; the calling
AE titles only with the token) and the login page; everything else needs the token (``node.web.auth``). No
request body over :data:`MAX_BODY_BYTES` is read (413). Responses carry a strict Content-Security-Policy
(nothing but this site's own stylesheet and forms) and pages showing studies are never cached.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node import __version__
from node.config import Settings
from node.jobs.broker import BrokerConfig, resolve_broker
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.web import api, pages
from node.web.actions import Actions, Dispatcher
from node.web.auth import SESSION_COOKIE, Authenticator
from node.web.context import LoginRequiredError, WebContext, client_id, context
from node.web.errors import NotAuthenticatedError, TooManyAttemptsError, WebError
from node.web.health import run_checks
from node.web.metrics import NodeCollector, registry
from node.web.queries import Queries
from node.web.results import ResultReader

#: The largest request body read (the login form and the actions' forms are a few hundred bytes; the API's JSON
#: bodies less): a bigger one is answered 413 before it is read, whoever sends it (login or not).
MAX_BODY_BYTES = 64 * 1024

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    settings: Settings,
    token: str,
    *,
    ledger: Ledger | None = None,
    broker: BrokerConfig | None = None,
    dispatcher: Dispatcher | None = None,
    clock: Callable[[], float] = time.time,
    health_timeout_s: float = 2.0,
) -> FastAPI:
    """The dashboard app for the node described by ``settings``; ``token`` is required (see ``load_token``).

    ``ledger``, ``broker`` and ``dispatcher`` default to the settings' ledger, the broker resolved like the
    workers' (the settings' ``broker_url`` or the embedded one in the spool) and a Celery client on that broker.
    """
    auth = Authenticator(token, clock=clock)
    owns_ledger = ledger is None
    ledger = ledger or Ledger.open(settings.effective_database_url)
    broker = broker or resolve_broker(settings)
    own_dispatcher = None
    if dispatcher is None:
        from node.web.dispatch import CeleryDispatcher

        dispatcher = own_dispatcher = CeleryDispatcher(broker, settings)
    repo = Repository(ledger, settings.late_instance_policy)
    results = ResultReader(settings.spool_dir)
    queue = settings.queue
    ctx = WebContext(
        settings=settings, ledger=ledger, repo=repo, auth=auth, queries=Queries(ledger, results),
        actions=Actions(repo, settings.spool_dir, dispatcher, clock), broker=broker,
        registry=registry(NodeCollector(ledger, results, broker, queue)), clock=clock,
        health_timeout_s=health_timeout_s,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if own_dispatcher is not None:
            own_dispatcher.close()
        if owns_ledger:
            ledger.dispose()

    app = FastAPI(title="BCBM AI node", version=__version__, lifespan=lifespan, docs_url="/api/docs",
                  redoc_url=None, openapi_url="/api/openapi.json")
    app.state.ctx = ctx
    app.state.peer_registry = registry(NodeCollector(ledger, results, broker, queue, per_peer=True))
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_api_route("/health", health, methods=["GET"], tags=["operations"])
    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["operations"])
    _install_handlers(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


class _TooLargeError(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 and never read past the limit.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked body is counted as
    it arrives and the request ends at the first chunk past the limit (whatever the route began to answer is
    replaced by the 413). Unauthenticated routes (``POST /login``) included: they read the body before any check.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": f"the request body is too large (at most {self.limit} bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        received = 0
        exceeded = False
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise _TooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not exceeded:
                await send(message)
            elif not answered:  # the route (or the error handler) is answering: answer 413 instead
                answered = True
                await self._refuse(send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLargeError:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not answered:
            await self._refuse(send)


def health(request: Request) -> JSONResponse:
    """Database, broker, spool disk and each destination; 200 when all pass, 503 otherwise."""
    ctx = context(request)
    checks = run_checks(ctx.ledger, ctx.broker, ctx.settings.spool_dir, ctx.settings.min_free_disk_bytes,
                        ctx.settings.destinations, ctx.health_timeout_s)
    ok = all(c.ok for c in checks)
    return JSONResponse({"status": "ok" if ok else "failing", "checks": [asdict(c) for c in checks]},
                        status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})


def metrics(request: Request) -> Response:
    """Prometheus text. Without credentials: no calling AE titles (they are the allow-list's values); with the
    token as ``Authorization: Bearer``, ``ainode_instances_received`` is broken down by calling AE title."""
    ctx = context(request)
    authorization = request.headers.get("authorization")
    chosen = ctx.registry
    if authorization:
        who = client_id(request)
        if wait := ctx.auth.failed_logins.retry_after(who):
            raise TooManyAttemptsError(wait)
        if not ctx.auth.bearer_ok(authorization):
            ctx.auth.failed_logins.failed(who)
            ctx.repo.audit("web-login-failed", ctx.clock(), peer=who, detail="wrong Bearer token on GET /metrics")
            raise NotAuthenticatedError("wrong token")
        chosen = request.app.state.peer_registry
    return Response(generate_latest(chosen), media_type=CONTENT_TYPE_LATEST)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path in ("/health", "/metrics")


def _install_handlers(app: FastAPI) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.path.startswith(("/studies", "/failures", "/api/")):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(WebError)
    async def web_error(request: Request, exc: WebError) -> Response:
        if isinstance(exc, LoginRequiredError):
            return RedirectResponse(exc.location, status_code=303)
        if _wants_json(request):
            headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
            if isinstance(exc, TooManyAttemptsError):
                headers["Retry-After"] = str(int(exc.retry_after_s + 0.5))
            return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=headers or None)
        session = context(request).auth.session(request.cookies.get(SESSION_COOKIE))
        return pages.error_page(exc.status_code, exc.message, session)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if _wants_json(request):
            return JSONResponse({"error": message}, status_code=exc.status_code)
        session = context(request).auth.session(request.cookies.get(SESSION_COOKIE))
        return pages.error_page(exc.status_code, message, session)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems: list[dict[str, Any]] = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")} for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)
