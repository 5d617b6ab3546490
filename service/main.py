"""The FastAPI application: ``create_app(settings)`` and its lifespan. Nothing runs at import."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.errors import install_error_handlers
from service.jobs import Jobs
from service.limits import BodyLimit
from service.metrics import HttpMetrics, QueueCollector
from service.routers import jobs, operations, ui
from service.security import KeyRing
from service.settings import ApiSettings
from worker.runner import start_reaper

DESCRIPTION = (
    "NaCS coreset service: send a CTR dataset URI and a budget; get back a small, clean "
    "training subset with corrected soft labels. Authenticate with Authorization: Bearer <key>."
)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the app. Raises SettingsError when there are no keys and insecure local mode is
    off."""
    settings = settings or ApiSettings()
    keys = settings.check()
    state = Jobs(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        # What the app built so far lives as long as the process: frozen out of the garbage
        # collector's generations, it is not traversed by every full collection.
        gc.freeze()
        stop = threading.Event()
        reaper = start_reaper(settings, stop) if settings.api_reaper else None
        try:
            yield
        finally:
            gc.unfreeze()
            stop.set()
            if reaper is not None:
                await asyncio.to_thread(reaper.join)
            await state.close()

    app = FastAPI(
        title="NaCS coreset service", version="1", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.keyring = KeyRing(keys)
    app.state.jobs = state
    registry = CollectorRegistry()
    registry.register(QueueCollector(state.store, state.queue))
    app.state.metrics_registry = registry
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(operations.router)
    app.include_router(ui.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics, registry=registry)  # outermost: counts every request
    return app

