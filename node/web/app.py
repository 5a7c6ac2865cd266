"""The FastAPI application: :func:`create_app` wires the ledger, broker, token and routes together.

Open routes: ``/health`` (JSON, 200 when every check passes, else 503), ``/metrics`` (Prometheus text) and the
login page; everything else needs the token (``node.web.auth``). Responses carry a strict Content-Security-Policy
(nothing but this site's own stylesheet and forms) and pages showing studies are never cached.
"""

from __future__ import annotations

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

from node import __version__
from node.config import Settings
from node.jobs.broker import BrokerConfig, resolve_broker
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.web import api, pages
from node.web.actions import Actions, Dispatcher
from node.web.auth import SESSION_COOKIE, Authenticator
from node.web.context import LoginRequiredError, WebContext, context
from node.web.errors import TooManyAttemptsError, WebError
from node.web.health import run_checks
from node.web.metrics import NodeCollector, registry
from node.web.queries import Queries
from node.web.results import ResultReader

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
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_api_route("/health", health, methods=["GET"], tags=["operations"])
    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["operations"])
    _install_handlers(app)
    return app


def health(request: Request) -> JSONResponse:
    """Database, broker, spool disk and each destination; 200 when all pass, 503 otherwise."""
    ctx = context(request)
    checks = run_checks(ctx.ledger, ctx.broker, ctx.settings.spool_dir, ctx.settings.min_free_disk_bytes,
                        ctx.settings.destinations, ctx.health_timeout_s)
    ok = all(c.ok for c in checks)
    return JSONResponse({"status": "ok" if ok else "failing", "checks": [asdict(c) for c in checks]},
                        status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})


def metrics(request: Request) -> Response:
    return Response(generate_latest(context(request).registry), media_type=CONTENT_TYPE_LATEST)


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
