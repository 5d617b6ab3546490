"""FastAPI dependencies: settings, the jobs, the calling tenant, the caller's job."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from service.jobs import Jobs
from service.security import KeyRing
from service.settings import ApiSettings
from worker.records import JobRecord


async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_jobs(request: Request) -> Jobs:
    return request.app.state.jobs  # type: ignore[no-any-return]


class BearerTenant(HTTPBearer):
    """The tenant of the request's API key; declared to OpenAPI as the bearer scheme."""

    def __init__(self) -> None:
        description = "An API key of your tenant: Authorization: Bearer <key>."
        super().__init__(scheme_name="HTTPBearer", auto_error=False, description=description)

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        keyring: KeyRing = request.app.state.keyring
        return keyring.tenant(request.headers.get("authorization"))


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
current_tenant = BearerTenant()
TenantDep = Annotated[str, Depends(current_tenant)]
JobId = Annotated[str, Path(min_length=1, max_length=64)]


async def owned_job(job_id: JobId, tenant: TenantDep, jobs: JobsDep) -> JobRecord:
    """The caller's job record (404 for another tenant's job, as for one that never existed)."""
    return await jobs.owned(job_id, tenant)


OwnedJobDep = Annotated[JobRecord, Depends(owned_job)]
