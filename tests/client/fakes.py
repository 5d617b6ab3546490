"""A scripted stand-in for the service at the HTTP transport level (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

BASE_URL = "http://nacs.test"
CREATED_AT = "2026-11-29T20:00:00Z"

Outcome = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def job_json(
    job_id: str = "job-1",
    status: str = "queued",
    *,
    phase: str | None = None,
    fraction: float = 0.0,
    message: str = "",
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A job as the service returns it (docs/design/API.md)."""
    finished = status in ("succeeded", "failed", "cancelled")
    return {
        "id": job_id,
        "status": status,
        "created_at": CREATED_AT,
        "started_at": "2026-11-29T20:00:01Z" if status != "queued" else None,
        "finished_at": "2026-11-29T20:00:09Z" if finished else None,
        "progress": {"phase": phase, "fraction": fraction, "message": message} if phase else None,
        "request": request or {"dataset_uri": "file:///data/train.parquet", "ratio": 0.1},
        "result": result,
        "error": error,
    }


def error_json(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def error_response(
    status: int,
    code: str = "error",
    message: str = "something",
    details: Any = None,
    **headers: str,
) -> httpx.Response:
    header_map = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.Response(status, json=error_json(code, message, details), headers=header_map)


class ScriptedService:
    """Answers requests from a script of outcomes, in order, and records every request.

    An outcome is an ``httpx.Response``, an exception to raise (a transport
    error), or a function of the request. When the script runs out, the last
    outcome repeats.
    """

    def __init__(self, *outcomes: Outcome) -> None:
        if not outcomes:
            raise ValueError("outcomes: give at least one")
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        index = min(len(self.requests), len(self.outcomes) - 1)
        self.requests.append(request)
        outcome = self.outcomes[index]
        if isinstance(outcome, Exception):
            raise outcome
        if callable(outcome):
            return outcome(request)
        return outcome

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def bodies(self) -> list[Any]:
        return [
            json.loads(request.content) if request.content else None for request in self.requests
        ]


class Recorder:
    """A sleep (or async sleep) that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)


class FakeClock:
    """A monotonic clock that advances only when the recorded sleep is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
