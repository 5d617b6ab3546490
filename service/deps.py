"""FastAPI dependencies: settings, the job store, the calling tenant, the caller's job.

The ones without I/O are ``async`` so they run on the event loop, not in the thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import NotFound
from service.security import KeyRing
from service.settings import Settings
from worker.queueing import JobStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


_bearer = HTTPBearer(auto_error=False, description="An API key of your tenant: Authorization: Bearer <key>.")


async def current_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> str:
    """The tenant of the request's API key (the bearer scheme is declared for OpenAPI; the header is read here)."""
    keyring: KeyRing = request.app.state.keyring
    return keyring.tenant(request.headers.get("authorization"))


def owned_job(
    job_id: Annotated[str, Path(min_length=1, max_length=64)],
    tenant: Annotated[str, Depends(current_tenant)],
    store: Annotated[JobStore, Depends(get_store)],
) -> dict[str, Any]:
    """The caller's job record; another tenant's job is a 404, as is one that never existed."""
    record = store.get(job_id) if job_id.isalnum() else None
    if record is None or record["tenant"] != tenant:
        raise NotFound(f"no job {job_id}", code="job_not_found")
    return record


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(current_tenant)]
OwnedJobDep = Annotated[dict[str, Any], Depends(owned_job)]
