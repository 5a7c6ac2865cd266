"""The JSON API (``/api/...``): the same data and actions as the pages, for scripts. Bearer token required."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from node.ledger.repository import JobRecord
from node.ledger.states import DeliveryState, StudyState
from node.web.context import api_auth, context
from node.web.errors import NotFoundError, WebError

router = APIRouter(prefix="/api", dependencies=[Depends(api_auth)])
Who = Annotated[str, Depends(api_auth)]


class RequeueRequest(BaseModel):
    #: re-queue even when the job does not look stuck yet (a duplicate run records nothing)
    force: bool = False


class RerunRequest(BaseModel):
    #: the job being re-run (default: the study's latest); the same value twice makes one new job
    after_job: int | None = None


def _job_json(job: JobRecord) -> dict[str, Any]:
    data = asdict(job)
    data["state"] = job.state.value
    return data


def _state(value: str | None, kind: type[StudyState] | type[DeliveryState]) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError as exc:
        allowed = ", ".join(s.value for s in kind)
        raise WebError(f"unknown state {value!r}; expected one of {allowed}") from exc


@router.get("/studies")
def list_studies(request: Request, state: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
    wanted = _state(state, StudyState)
    rows = context(request).queries.studies(states=None if wanted is None else (wanted,), limit=limit)
    return {"studies": [row.as_json() for row in rows]}


@router.get("/studies/{study_instance_uid}")
def get_study(request: Request, study_instance_uid: str) -> dict[str, Any]:
    detail = context(request).queries.study(study_instance_uid)
    if detail is None:
        raise NotFoundError(f"study {study_instance_uid} is not in the ledger")
    return detail.as_json()


@router.post("/studies/{study_instance_uid}/rerun")
def rerun_study(request: Request, study_instance_uid: str, who: Who, body: RerunRequest | None = None) -> JSONResponse:
    outcome = context(request).actions.rerun(study_instance_uid, who, body.after_job if body else None)
    return JSONResponse({"created": outcome.created, "job": _job_json(outcome.job)},
                        status_code=201 if outcome.created else 200)


@router.get("/deliveries")
def list_deliveries(request: Request, state: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
    rows = context(request).queries.deliveries(state=_state(state, DeliveryState), limit=limit)
    return {"deliveries": [asdict(d) for d in rows]}


@router.post("/deliveries/{delivery_id}/resend")
def resend_delivery(request: Request, delivery_id: int, who: Who) -> dict[str, Any]:
    ctx = context(request)
    count = ctx.actions.resend(delivery_id, who)
    delivery = ctx.queries.delivery(delivery_id)
    return {"resent": count, "delivery": None if delivery is None else asdict(delivery)}


@router.get("/failures")
def failures(request: Request) -> dict[str, Any]:
    queries = context(request).queries
    return {
        "studies": [row.as_json() for row in queries.studies(states=(StudyState.FAILED,))],
        "jobs": [{"study_instance_uid": uid, **job.as_json()} for uid, job in queries.failed_jobs()],
        "deliveries": [asdict(d) for state in (DeliveryState.FAILED, DeliveryState.COMMIT_FAILED)
                       for d in queries.deliveries(state=state)],
    }


@router.post("/jobs/{job_id}/requeue")
def requeue_job(request: Request, job_id: int, who: Who, body: RequeueRequest | None = None) -> dict[str, Any]:
    """A stuck job (queued, or processing with no live worker) handed to the workers again."""
    ctx = context(request)
    job = ctx.actions.requeue(job_id, who, ctx.settings, force=body.force if body else False)
    return {"requeued": True, "job": _job_json(job)}

