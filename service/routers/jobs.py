"""/jobs: submit, read, list, cancel, result."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import OwnedJobDep, SettingsDep, StoreDep, TenantDep
from service.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from service.jobs import cancel, submit, to_public
from service.schemas import ErrorBody, Job, JobPage, Manifest
from worker.spec import JobRequest, JobStatus
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


@router.post(
    "",
    status_code=202,
    response_model=Job,
    responses={200: {"model": Job, "description": "The job an earlier request with this Idempotency-Key made"}, **_ERRORS},
)
def create_job(
    request: JobRequest,
    response: Response,
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Job:
    """Submit a selection job (202 and Location); the same Idempotency-Key and body return the same job (200)."""
    job, created = submit(store, settings, tenant, request, idempotency_key)
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/jobs/{job.id}"
    return job


@router.get("", response_model=JobPage, responses=_ERRORS)
def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """The caller's jobs, newest first, a page at a time."""
    try:
        records, next_cursor = store.page(tenant, status=status, limit=limit, cursor=cursor)
    except ValueError as error:
        raise Unprocessable(str(error)) from None
    return JobPage(jobs=[to_public(r) for r in records], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job, responses=_ERRORS)
async def get_job(job: OwnedJobDep) -> Job:
    return to_public(job)


@router.post("/{job_id}/cancel", response_model=Job, responses=_ERRORS)
def cancel_job(job: OwnedJobDep, store: StoreDep) -> Job:
    """Cancel a queued job at once, or ask a running one to stop (it turns cancelled within seconds)."""
    return cancel(store, job)


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
