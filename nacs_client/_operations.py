"""What each call does, written once for the sync and the async client.

An operation is a generator that yields the effects it needs, :class:`Send`
(send one HTTP request, resume with the response or the transport error) and
:class:`Sleep` (wait, resume with ``None``), and returns its result. The sync
client runs operations with ``httpx.Client`` and a blocking sleep; the async
client with ``httpx.AsyncClient`` and an awaitable sleep. Retries, error
mapping, request building and the polling of ``wait`` live here only.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from nacs_client._retry import RETRY_STATUSES, RetryPolicy, is_retryable_exception
from nacs_client.errors import (
    APIConnectionError,
    APITimeoutError,
    JobCancelledError,
    JobFailedError,
    NacsError,
    WaitTimeoutError,
    error_from_response,
)
from nacs_client.types import Job, JobPage, JobResult, Manifest

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Send:
    """Send ``request``; resume with the ``httpx.Response`` or the ``httpx.TransportError``."""

    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds``; resume with ``None``."""

    seconds: float


Effect = Send | Sleep
Operation = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the service: base URL, default headers, retry policy, clock."""

    base_url: str
    headers: Mapping[str, str]
    retry: RetryPolicy
    clock: Callable[[], float]

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        return httpx.Request(
            method,
            self.base_url + path,
            params=clean_params or None,
            json=json,
            headers={**self.headers, **(headers or {})},
        )


def send_with_retries(endpoint: Endpoint, request: httpx.Request) -> Operation[httpx.Response]:
    """Send ``request``, retrying transient failures; return a 2xx response or raise the mapped
    error.

    The same ``request`` object (same headers, so the same ``Idempotency-Key``)
    is sent on every attempt.
    """
    policy = endpoint.retry
    retry = 0
    while True:
        outcome = yield Send(request)
        retry_after_s: float | None = None
        if isinstance(outcome, httpx.TransportError):
            if retry >= policy.max_retries or not is_retryable_exception(outcome):
                raise _connection_error(outcome, request, attempts=retry + 1) from outcome
        else:
            response: httpx.Response = outcome
            if response.is_success:
                return response
            if response.status_code not in RETRY_STATUSES or retry >= policy.max_retries:
                raise error_from_response(response)
            retry_after_s = policy.retry_after_s(response)
            if retry_after_s is not None and retry_after_s > policy.max_retry_after_s:
                raise error_from_response(response)
        yield Sleep(policy.wait_s(retry, retry_after_s))
        retry += 1


def _connection_error(
    error: httpx.TransportError, request: httpx.Request, *, attempts: int
) -> APIConnectionError:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    target = f"{request.method} {request.url}"
    detail = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"{target} timed out{tries}: {detail}", request=request)
    return APIConnectionError(f"could not reach {target}{tries}: {detail}", request=request)


def call(endpoint: Endpoint, request: httpx.Request, model: type[ModelT]) -> Operation[ModelT]:
    """Send ``request`` with retries and parse the JSON body as ``model``."""
    response = yield from send_with_retries(endpoint, request)
    try:
        return model.model_validate(response.json())
    except ValueError as error:  # not JSON, or not the documented shape
        summary = str(error).splitlines()[0]
        raise NacsError(
            f"unexpected answer to {request.method} {request.url} "
            f"(HTTP {response.status_code}): {summary}"
        ) from error


# --- jobs -------------------------------------------------------------------------------


def create_request(
    endpoint: Endpoint,
    dataset_uri: str,
    *,
    ratio: float | None = None,
    size: int | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    numeric_columns: Sequence[str] | None = None,
    numeric_detection: bool | None = None,
    column_names: Sequence[str] | None = None,
    format: str | None = None,
    output_uri: str | None = None,
    idempotency_key: str | None = None,
) -> httpx.Request:
    """The ``POST /jobs`` request, with one ``Idempotency-Key`` (a new uuid4 unless given)."""
    if not isinstance(dataset_uri, str) or not dataset_uri.strip():
        raise ValueError(f"dataset_uri: expected a non-empty URI string, got {dataset_uri!r}")
    if (ratio is None) == (size is None):
        raise ValueError("ratio, size: give exactly one budget, a ratio in (0, 1) or a size (rows)")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise ValueError(f"ratio: expected a number in (0, 1), got {ratio!r}")
        if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
            raise ValueError(f"ratio: expected a number in (0, 1), got {ratio!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size: expected a whole number of rows, at least 1, got {size!r}")
    for name, columns in (
        ("feature_columns", feature_columns),
        ("numeric_columns", numeric_columns),
        ("column_names", column_names),
    ):
        if isinstance(columns, str):
            raise ValueError(f"{name}: expected a list of column names, got the string {columns!r}")
    if idempotency_key is not None and not str(idempotency_key).strip():
        raise ValueError("idempotency_key: expected a non-empty string")
    body: dict[str, Any] = {"dataset_uri": dataset_uri}
    optional = {
        "ratio": ratio,
        "size": size,
        "method": method,
        "options": dict(options) if options is not None else None,
        "label_column": label_column,
        "feature_columns": list(feature_columns) if feature_columns is not None else None,
        "numeric_columns": list(numeric_columns) if numeric_columns is not None else None,
        "numeric_detection": numeric_detection,
        "column_names": list(column_names) if column_names is not None else None,
        "format": format,
        "output_uri": output_uri,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    key = str(idempotency_key) if idempotency_key is not None else str(uuid.uuid4())
    return endpoint.request("POST", "/jobs", json=body, headers={"Idempotency-Key": key})


def _job_path(job_id: str, suffix: str = "") -> str:
    if not isinstance(job_id, str) or not job_id or "/" in job_id:
        raise ValueError(f"job_id: expected a job id, got {job_id!r}")
    return f"/jobs/{job_id}{suffix}"


def get_job(endpoint: Endpoint, job_id: str) -> Operation[Job]:
    return (yield from call(endpoint, endpoint.request("GET", _job_path(job_id)), Job))


def cancel_job(endpoint: Endpoint, job_id: str) -> Operation[Job]:
    return (yield from call(endpoint, endpoint.request("POST", _job_path(job_id, "/cancel")), Job))


def get_manifest(endpoint: Endpoint, job_id: str) -> Operation[Manifest]:
    request = endpoint.request("GET", _job_path(job_id, "/result"))
    return (yield from call(endpoint, request, Manifest))


def report_url(endpoint: Endpoint, job_id: str) -> str:
    return endpoint.base_url + _job_path(job_id, "/report")


def get_report(endpoint: Endpoint, job_id: str) -> Operation[str]:
    """report.html of a succeeded job, as text."""
    path = _job_path(job_id, "/report")
    request = endpoint.request("GET", path, headers={"Accept": "text/html"})
    response = yield from send_with_retries(endpoint, request)
    return response.text


def list_page(
    endpoint: Endpoint, *, status: str | None, limit: int | None, cursor: str | None
) -> Operation[JobPage]:
    request = endpoint.request(
        "GET", "/jobs", params={"status": status, "limit": limit, "cursor": cursor}
    )
    return (yield from call(endpoint, request, JobPage))


def check_list_arguments(status: str | None, limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a page size of at least 1, got {limit!r}")
    if status is not None and not isinstance(status, str):
        raise ValueError(f"status: expected a job status string, got {status!r}")


def wait_for_job(
    endpoint: Endpoint,
    job_id: str,
    *,
    timeout_s: float | None,
    poll_interval_s: float,
    on_update: Callable[[Job], None],
) -> Operation[Job]:
    """Poll the job until it ends; return it when it succeeded, raise when it failed or was
    cancelled."""
    if timeout_s is not None and not (timeout_s >= 0):
        raise ValueError(f"timeout: expected seconds >= 0 or None, got {timeout_s!r}")
    if not (poll_interval_s > 0):
        raise ValueError(f"poll_interval: expected seconds > 0, got {poll_interval_s!r}")
    deadline = endpoint.clock() + timeout_s if timeout_s is not None else None
    while True:
        job = yield from get_job(endpoint, job_id)
        on_update(job)
        if job.status == "succeeded":
            return job
        if job.status == "failed":
            raise JobFailedError(job)
        if job.status == "cancelled":
            raise JobCancelledError(job)
        pause_s = poll_interval_s
        if deadline is not None:
            remaining_s = deadline - endpoint.clock()
            if remaining_s <= 0:
                raise WaitTimeoutError(job, timeout_s or 0.0)
            pause_s = min(pause_s, remaining_s)
        yield Sleep(pause_s)


def next_cursor(page: JobPage, cursor: str | None) -> str | None:
    """The cursor of the page after ``page``, or ``None`` after the last one."""
    if not page.next_cursor:
        return None
    if page.next_cursor == cursor:
        raise NacsError(f"GET /jobs returned the same cursor {cursor!r} twice; stopping")
    return page.next_cursor


def finished_result(endpoint: Endpoint, job_id: str) -> Operation[tuple[JobResult, Manifest]]:
    """Where a succeeded job's files are, and its manifest; the job's error when it failed or was
    cancelled."""
    job = yield from get_job(endpoint, job_id)
    if job.status == "failed":
        raise JobFailedError(job)
    if job.status == "cancelled":
        raise JobCancelledError(job)
    manifest = yield from get_manifest(endpoint, job_id)
    if job.result is None:  # it succeeded between the two calls
        job = yield from get_job(endpoint, job_id)
    if job.result is None:
        raise NacsError(f"job {job_id} has a manifest but its record names no result files")
    return job.result, manifest
