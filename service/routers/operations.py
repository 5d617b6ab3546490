"""Health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import SettingsDep, StoreDep
from service.errors import error_body
from service.schemas import ErrorBody, Health
from worker.storage import check_storage

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(store: StoreDep, settings: SettingsDep) -> Response:
    """Redis and storage answer (503 otherwise)."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(store.ping)
        checks["redis"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = f"unreachable ({type(error).__name__})"
    try:
        await run_in_threadpool(check_storage, settings)
        checks["storage"] = "ok"
    except Exception as error:  # noqa: BLE001
        checks["storage"] = f"unreachable ({type(error).__name__})"
    failing = sorted(name for name, value in checks.items() if value != "ok")
    if not failing:
        return JSONResponse(Health(status="ready", checks=checks).model_dump())
    message = f"not ready: {' and '.join(failing)} unreachable"
    return JSONResponse(error_body("not_ready", message, checks), status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    data = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
