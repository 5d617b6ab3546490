"""FastAPI dependencies: settings, the job store, the calling tenant, the caller's job.

All are ``async`` and read Redis through ``service.records.AsyncRecords``, so a request
never waits for a thread of the pool to resolve them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from service.jobs import find_owned
from service.security import KeyRing
from service.settings import Settings
from worker.queueing import JobStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


class BearerTenant(HTTPBearer):
    """The tenant of the request's API key; declared to OpenAPI as the bearer scheme ``HTTPBearer``."""

    def __init__(self) -> None:
        super().__init__(
            scheme_name="HTTPBearer",
            auto_error=False,
            description="An API key of your tenant: Authorization: Bearer <key>.",
        )

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        keyring: KeyRing = request.app.state.keyring
        return keyring.tenant(request.headers.get("authorization"))


current_tenant = BearerTenant()
# The OpenAPI security requirement ``current_tenant`` adds, for a route that checks the key itself.
BEARER: dict[str, Any] = {"security": [{"HTTPBearer": []}]}

MAX_JOB_ID_LENGTH = 64
JobId = Annotated[str, Path(min_length=1, max_length=MAX_JOB_ID_LENGTH)]


async def owned_job(request: Request, job_id: JobId, tenant: Annotated[str, Depends(current_tenant)]) -> dict[str, Any]:
    """The caller's job record (404 for another tenant's job, as for one that never existed)."""
    return await find_owned(request.app.state.records, job_id, tenant)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(current_tenant)]
OwnedJobDep = Annotated[dict[str, Any], Depends(owned_job)]
