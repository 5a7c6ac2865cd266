"""The server-rendered pages: login, studies, one study, failures, and the two actions as CSRF-checked forms.

Jinja2 templates with autoescaping, one stylesheet served by the app itself; no JavaScript, no external asset.
Every action answers with a redirect (POST / redirect / GET) to a page showing a fixed notice.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from node.ledger.states import DeliveryState, StudyState
from node.web.auth import SESSION_COOKIE, Session
from node.web.context import client_id, context, is_https, page_session
from node.web.errors import ForbiddenError, NotFoundError

router = APIRouter()
PageSession = Annotated[Session, Depends(page_session)]

NOTICES = {
    "rerun-created": "Re-run queued as job #{job}.",
    "rerun-existing": "This re-run was already requested: job #{job}.",
    "resent": "Delivery {delivery} put back in the outbox; it is sent on the next pass.",
    "requeued": "Job #{job} re-queued and handed to the workers again.",
}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} s" if value < 60 else f"{int(value // 60)} min {value % 60:02.0f} s"


templates = Environment(loader=PackageLoader("node.web", "templates"), autoescape=select_autoescape(["html"]))
templates.filters["when"] = _when
templates.filters["secs"] = _secs
STYLESHEET = resources.files("node.web").joinpath("static/style.css").read_text(encoding="utf-8")


def render(name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**values), status_code=status_code)


def error_page(status_code: int, message: str, session: Session | None) -> HTMLResponse:
    return render("error.html", status_code, status=status_code, error=message, session=session, page=None)


def _notice(request: Request) -> str | None:
    code = request.query_params.get("notice")
    if code not in NOTICES:
        return None
    numbers = {k: request.query_params.get(k, "") for k in ("job", "delivery")}
    if not all(v.isdigit() for v in numbers.values() if v):
        return None
    return NOTICES[code].format(**numbers)


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _check_csrf(request: Request, session: Session, form: dict[str, str]) -> None:
    if not context(request).auth.csrf_ok(session, form.get("csrf")):
        raise ForbiddenError()


def _safe_next(target: str | None) -> str:
    """Only paths of this site (no ``//host`` or scheme) are followed after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/studies"
    return target


@router.get("/static/style.css", include_in_schema=False)
def stylesheet() -> Response:
    return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/studies", status_code=303)


@router.get("/login", include_in_schema=False)
def login_page(request: Request) -> Response:
    next_path = _safe_next(request.query_params.get("next"))
    if context(request).auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(next_path, status_code=303)
    return render("login.html", next=next_path, session=None, page="login")


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    ctx = context(request)
    form = await _form(request)
    who = client_id(request)
    next_path = _safe_next(form.get("next"))
    if wait := ctx.auth.failed_logins.retry_after(who):
        refused = render("login.html", 429, next=next_path, session=None, page="login",
                         error=f"Too many wrong tokens from this address: try again in {int(wait + 0.5)} s.")
        refused.headers["Retry-After"] = str(int(wait + 0.5))
        return refused
    if not ctx.auth.token_ok(form.get("token")):
        ctx.auth.failed_logins.failed(who)
        await run_in_threadpool(ctx.repo.audit, "web-login-failed", ctx.clock(), peer=who,
                                detail="wrong token on the login page")
        return render("login.html", 401, next=next_path, session=None, page="login",
                      error="Wrong token. The attempt was recorded.")
    ctx.auth.failed_logins.succeeded(who)
    await run_in_threadpool(ctx.repo.audit, "web-login", ctx.clock(), peer=who, status=0, detail="dashboard login")
    response = RedirectResponse(next_path, status_code=303)
    secure = ctx.settings.web_secure_cookies or is_https(request)  # behind a TLS proxy: X-Forwarded-Proto
    response.set_cookie(SESSION_COOKIE, ctx.auth.issue_cookie(), max_age=ctx.auth.max_age_s, httponly=True,
                        samesite="strict", secure=secure, path="/")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, session: PageSession) -> Response:
    ctx = context(request)
    _check_csrf(request, session, await _form(request))
    await run_in_threadpool(ctx.repo.audit, "web-logout", ctx.clock(), peer=client_id(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=ctx.settings.web_secure_cookies or is_https(request))
    return response


@router.get("/studies", include_in_schema=False)
def studies_page(request: Request, session: PageSession) -> HTMLResponse:
    rows = context(request).queries.studies()
    return render("studies.html", studies=rows, session=session, page="studies", notice=_notice(request))


@router.get("/studies/{study_instance_uid}", include_in_schema=False)
def study_page(request: Request, study_instance_uid: str, session: PageSession) -> HTMLResponse:
    detail = context(request).queries.study(study_instance_uid)
    if detail is None:
        raise NotFoundError(f"study {study_instance_uid} is not in the ledger")
    return render("study.html", detail=detail, session=session, page="studies", notice=_notice(request))


@router.get("/failures", include_in_schema=False)
def failures_page(request: Request, session: PageSession) -> HTMLResponse:
    queries = context(request).queries
    return render(
        "failures.html", session=session, page="failures", notice=_notice(request),
        studies=queries.studies(states=(StudyState.FAILED,)), jobs=queries.failed_jobs(),
        deliveries=[*queries.deliveries(state=DeliveryState.FAILED),
                    *queries.deliveries(state=DeliveryState.COMMIT_FAILED)],
    )


@router.post("/studies/{study_instance_uid}/rerun", include_in_schema=False)
async def rerun_form(request: Request, study_instance_uid: str, session: PageSession) -> Response:
    form = await _form(request)
    _check_csrf(request, session, form)
    after = form.get("after_job", "")
    outcome = await run_in_threadpool(context(request).actions.rerun, study_instance_uid, client_id(request),
                                      int(after) if after.isdigit() else None)
    code = "rerun-created" if outcome.created else "rerun-existing"
    return RedirectResponse(f"/studies/{quote(study_instance_uid)}?notice={code}&job={outcome.job.id}",
                            status_code=303)


@router.post("/deliveries/{delivery_id}/resend", include_in_schema=False)
async def resend_form(request: Request, delivery_id: int, session: PageSession) -> Response:
    form = await _form(request)
    _check_csrf(request, session, form)
    study = form.get("study") or None
    await run_in_threadpool(context(request).actions.resend, delivery_id, client_id(request),
                            study_instance_uid=study)
    page = f"/studies/{quote(study)}" if study else "/failures"
    return RedirectResponse(f"{page}?notice=resent&delivery={delivery_id}", status_code=303)


@router.post("/jobs/{job_id}/requeue", include_in_schema=False)
async def requeue_form(request: Request, job_id: int, session: PageSession) -> Response:
    form = await _form(request)
    _check_csrf(request, session, form)
    study = form.get("study") or None
    ctx = context(request)
    job = await run_in_threadpool(ctx.actions.requeue, job_id, client_id(request), ctx.settings,
                                  force=form.get("force") == "1", study_instance_uid=study)
    return RedirectResponse(f"/studies/{quote(job.study_instance_uid)}?notice=requeued&job={job.id}",
                            status_code=303)

