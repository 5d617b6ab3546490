"""/jobs: submit, read, list, cancel, result, report."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import HTMLResponse

from service.deps import JobsDep, OwnedJobDep, TenantDep
from service.routers.ui import REPORT_HEADERS
from service.schemas import ErrorBody, Job, JobPage
from worker.outputs import Manifest
from worker.pagination import CURSOR_PATTERN
from worker.records import JobStatus
from worker.spec import JobRequest

# Bodies without a Content-Type are read as JSON, as clients that omit it expect.
router = APIRouter(prefix="/jobs", tags=["jobs"], strict_content_type=False)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request"},
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
    404: {"model": ErrorBody, "description": "No such job for this tenant"},
    409: {"model": ErrorBody, "description": "Conflict"},
    413: {"model": ErrorBody, "description": "Body too large"},
    422: {"model": ErrorBody, "description": "Invalid request: the message names the field"},
    429: {"model": ErrorBody, "description": "Too many active jobs"},
    503: {"model": ErrorBody, "description": "Redis or storage unreachable"},
}
REPLAYED: dict[int | str, dict[str, Any]] = {
    200: {"model": Job, "description": "The job an earlier request with this Idempotency-Key made"}
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"\S",
        description="The same key and body return the same job (200); another body is a 409.",
    ),
]


@router.post("", status_code=202, responses=REPLAYED | ERRORS)
async def create_job(
    body: JobRequest, tenant: TenantDep, jobs: JobsDep, response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Submit a selection job (202 and Location); the same Idempotency-Key and body return the
    same job (200)."""
    job, created = await jobs.submit(tenant, body, idempotency_key)
    response.headers["Location"] = f"/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return job


@router.get("", responses=ERRORS)
async def list_jobs(
    tenant: TenantDep, jobs: JobsDep, status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="next_cursor of the previous page."),
    ] = None,
) -> JobPage:
    """The caller's jobs, newest first, a page at a time."""
    return await jobs.page(tenant, status, limit, cursor)


@router.get("/{job_id}", responses=ERRORS)
async def get_job(job: OwnedJobDep) -> Job:
    """The caller's job: status, progress, the accepted request, and the result or error once
    it ended."""
    return Job.of(job)


@router.post("/{job_id}/cancel", responses=ERRORS)
async def cancel_job(job: OwnedJobDep, jobs: JobsDep) -> Job:
    """Cancel a queued job at once, or ask a running one to stop (it turns cancelled within
    seconds)."""
    return await jobs.cancel(job)


@router.get("/{job_id}/result", responses=ERRORS, response_model_exclude_unset=True)
async def get_result(job: OwnedJobDep, jobs: JobsDep) -> Manifest:
    """The manifest of a succeeded job."""
    return await jobs.manifest(job)


# The report's errors are JSON, like every error, though its answer is HTML (a response's
# model would be documented as the route's media type).
ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
REPORT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "report.html"},
    **{
        status: {"description": entry["description"], "content": ERROR_JSON}
        for status, entry in ERRORS.items()
    },
}


@router.get("/{job_id}/report", response_class=HTMLResponse, responses=REPORT)
async def get_report(job: OwnedJobDep, jobs: JobsDep) -> HTMLResponse:
    """The report of a succeeded job: one self-contained HTML page (plots inline, no script),
    served under a Content-Security-Policy that lets nothing load or run."""
    return HTMLResponse(await jobs.report(job), headers=REPORT_HEADERS)
