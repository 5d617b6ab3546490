"""/jobs: submit, read, list, cancel, result."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import BEARER, JobId, OwnedJobDep, SettingsDep, StoreDep, TenantDep
from service.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from service.jobs import JsonBody, cancel, job_response, public_job, submission_response
from service.schemas import ErrorBody, Job, JobPage, Manifest
from worker.spec import JobStatus
from worker.storage import read_bytes

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS = {
    400: {"model": ErrorBody, "description": "Malformed request"},
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
    404: {"model": ErrorBody, "description": "No such job for this tenant"},
    409: {"model": ErrorBody, "description": "Conflict"},
    413: {"model": ErrorBody, "description": "Body too large"},
    422: {"model": ErrorBody, "description": "Invalid request: the message names the field"},
    429: {"model": ErrorBody, "description": "Too many active jobs"},
    503: {"model": ErrorBody, "description": "Redis or storage unreachable"},
}


# What FastAPI would document for a ``JobRequest`` body and an ``Idempotency-Key`` header
# parameter: create_job reads both itself (see service.jobs.submission_response).
_SUBMISSION: dict[str, Any] = {
    "parameters": [
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": False,
            "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Idempotency-Key"},
        }
    ],
    "requestBody": {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
        "required": True,
    },
}


@router.post(
    "",
    status_code=202,
    response_model=Job,
    responses={200: {"model": Job, "description": "The job an earlier request with this Idempotency-Key made"}, **_ERRORS},
    openapi_extra=BEARER | _SUBMISSION,
)
async def create_job(http: Request) -> Response:
    """Submit a selection job (202 and Location); the same Idempotency-Key and body return the same job (200)."""
    # The key, the body and the header are read here rather than by FastAPI's dependencies and
    # body validation (a third of this route's time): the same checks, errors and OpenAPI.
    # service.hot_paths answers this route ahead of FastAPI; this route remains its declaration
    # to OpenAPI and the fallback for a request the hot path does not take.
    headers = http.headers
    return await submission_response(
        http.app.state, await http.body(), headers.get("authorization"), headers.get("content-type"), headers.get("idempotency-key")
    )


@router.get("", response_model=JobPage, responses=_ERRORS)
async def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """The caller's jobs, newest first, a page at a time."""
    try:
        records, next_cursor = await run_in_threadpool(store.page, tenant, status=status, limit=limit, cursor=cursor)
    except ValueError as error:
        raise Unprocessable(str(error)) from None
    return JsonBody({"jobs": [public_job(r) for r in records], "next_cursor": next_cursor})


@router.get("/{job_id}", response_model=Job, responses=_ERRORS, openapi_extra=BEARER)
async def get_job(request: Request, job_id: JobId) -> Response:
    """The caller's job: status, progress, the accepted request, and the result or error once it ended."""
    # The hottest route, answered by service.hot_paths ahead of FastAPI (this route declares it to
    # OpenAPI and serves what the hot path passes on). The key is checked by job_response rather
    # than by a dependency; BEARER declares the scheme to OpenAPI as the dependency would.
    return await job_response(request.app.state, job_id, request.headers.get("authorization"))


@router.post("/{job_id}/cancel", response_model=Job, responses=_ERRORS)
async def cancel_job(job: OwnedJobDep, store: StoreDep) -> Response:
    """Cancel a queued job at once, or ask a running one to stop (it turns cancelled within seconds)."""
    return JsonBody(await run_in_threadpool(cancel, store, job))


@router.get("/{job_id}/result", response_model=Manifest, responses=_ERRORS)
async def get_result(job: OwnedJobDep, settings: SettingsDep) -> Manifest:
    """The manifest of a succeeded job."""
    if job["status"] != "succeeded" or not job.get("result"):
        raise Conflict(f"job {job['id']} is {job['status']}; a result exists only once it succeeded", code="job_not_succeeded")
    manifest_uri = job["result"]["manifest_uri"]
    try:
        raw = await run_in_threadpool(read_bytes, manifest_uri, settings)
    except FileNotFoundError:
        raise NotFound(f"the manifest {manifest_uri} is no longer in storage", code="result_missing") from None
    except Exception as error:  # noqa: BLE001 - object-store clients raise their own errors
        raise ServiceUnavailable(
            f"the result store did not answer ({type(error).__name__})", code="storage_unavailable", headers={"Retry-After": "5"}
        ) from None
    return Manifest.model_validate(json.loads(raw))
