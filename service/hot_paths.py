"""``POST /jobs`` and ``GET /jobs/{job_id}`` answered at the ASGI level, ahead of FastAPI.

Why: the two routes clients call most spent more CPU in the framework than in their own
work (FastAPI's routing, request objects and response handling, Starlette's middleware
chain, the body replayed from one middleware to the next). ``HotPaths``, the app's outermost
middleware, recognises the two requests by method and path and answers them itself.

How it stays the same API: it answers through the routes' own functions
(``service.jobs.submission_response`` and ``job_response``), reads the body under the same
bound (``service.limits.read_bounded``), maps errors as ``service.errors``' handlers do (an
unexpected exception still reaches Starlette's 500 handler), and counts each request in the
same metrics series, labelled as ``HttpMetrics`` labels it. Every other request (another
path or method, HEAD, a job id FastAPI's path rule would refuse, an app under a root path)
goes to the FastAPI app unchanged, and the FastAPI routes stay declared for the OpenAPI
schema and as that fallback.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import redis.exceptions
from fastapi import Response
from starlette.datastructures import State

from service.deps import MAX_JOB_ID_LENGTH
from service.errors import ApiError, error_response, redis_down_response
from service.jobs import job_response, submission_response
from service.limits import BodyRefused, read_bounded, send_refusal
from service.metrics import RequestMetrics

# The metrics labels HttpMetrics gives these requests: the route templates, and "unmatched"
# for a body refused before routing.
JOBS_ROUTE = "/jobs"
JOB_ROUTE = "/jobs/{job_id}"
UNMATCHED = "unmatched"
_JOB_PREFIX = "/jobs/"


class HotPaths:
    """Serve ``POST /jobs`` and ``GET /jobs/{job_id}`` directly; pass everything else to ``app``."""

    def __init__(self, app: Any, state: State, metrics: RequestMetrics) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            method = scope["method"]
            if path == JOBS_ROUTE:
                if method == "POST":
                    await self._submit(scope, receive, send)
                    return
            elif method == "GET" and path.startswith(_JOB_PREFIX):
                job_id = path[len(_JOB_PREFIX) :]
                if job_id and len(job_id) <= MAX_JOB_ID_LENGTH and "/" not in job_id:
                    await self._read(scope, receive, send, job_id)
                    return
        await self.app(scope, receive, send)

    async def _submit(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        route, status = JOBS_ROUTE, 500
        try:
            # Headers as Starlette reads them (the first of a name, latin-1), Content-Length as
            # BodyLimit reads it (the last).
            authorization = content_type = idempotency_key = content_length = None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    content_length = value
                elif name == b"authorization":
                    authorization = authorization or value.decode("latin-1")
                elif name == b"content-type":
                    content_type = content_type or value.decode("latin-1")
                elif name == b"idempotency-key":
                    idempotency_key = idempotency_key or value.decode("latin-1")
            try:
                body = await read_bounded(
                    receive, content_length, self.state.settings.max_body_bytes
                )
            except BodyRefused as refused:
                route, status = UNMATCHED, refused.status
                await send_refusal(send, refused)
                return
            if body is None:  # the client left: no answer, noted as HttpMetrics notes it
                route = UNMATCHED
                return
            status = await _respond(
                scope,
                receive,
                send,
                submission_response(self.state, body, authorization, content_type, idempotency_key),
            )
        finally:
            self.metrics.note("POST", route, status, time.perf_counter() - started)

    async def _read(self, scope: dict[str, Any], receive: Any, send: Any, job_id: str) -> None:
        started = time.perf_counter()
        status = 500
        try:
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            status = await _respond(
                scope, receive, send, job_response(self.state, job_id, authorization)
            )
        finally:
            self.metrics.note("GET", JOB_ROUTE, status, time.perf_counter() - started)


async def _respond(
    scope: dict[str, Any], receive: Any, send: Any, answer: Awaitable[Response]
) -> int:
    """Send ``answer``'s response, or the error response the app's handlers give; returns its status.

    Any other exception propagates to Starlette's ``ServerErrorMiddleware`` (the 500 handler).
    """
    try:
        response = await answer
    except ApiError as error:
        response = error_response(error)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        response = redis_down_response(error)
    await response(scope, receive, send)
    return response.status_code
