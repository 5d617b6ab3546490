"""Health, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import JobsDep, SettingsDep
from service.errors import error_body
from service.schemas import ErrorBody, Health
from worker.storage import check_storage

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(jobs: JobsDep, settings: SettingsDep) -> Response:
    """Redis and storage answer (503 otherwise)."""
    checks: dict[str, str] = {}
    async def redis() -> None:
        await jobs.redis.ping()

    async def storage() -> None:
        await asyncio.to_thread(check_storage, settings)

    for name, probe in (("redis", redis), ("storage", storage)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"unreachable ({type(error).__name__})"
    failing = sorted(name for name, value in checks.items() if value != "ok")
    if not failing:
        return JSONResponse(Health(status="ready", checks=checks).model_dump())
    message = f"not ready: {' and '.join(failing)} unreachable"
    body = error_body("not_ready", message, checks)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    data = await asyncio.to_thread(generate_latest, request.app.state.metrics_registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
