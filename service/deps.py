"""FastAPI dependencies: settings, the job store, the calling tenant, the caller's job.

The ones without I/O are ``async`` so they run on the event loop, not in the thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request

from service.errors import NotFound
from service.security import KeyRing
from service.settings import Settings
from worker.queueing import JobStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def current_tenant(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    keyring: KeyRing = request.app.state.keyring
    return keyring.tenant(authorization)


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
