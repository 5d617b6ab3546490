"""The SDK's one error hierarchy, and the mapping from HTTP responses to it.

```
NacsError
├── APIConnectionError          the service could not be reached
│   └── APITimeoutError         the request timed out
├── APIStatusError              the service answered with an error status
│   ├── BadRequestError         400, 422 (``field`` names the bad field)
│   ├── AuthenticationError     401
│   ├── NotFoundError           404
│   ├── ConflictError           409
│   ├── PayloadTooLargeError    413
│   ├── RateLimitError          429
│   └── InternalServerError     5xx
│       └── ServiceUnavailableError  503
├── JobFailedError              the job ended ``failed``
├── JobCancelledError           the job ended ``cancelled``
└── WaitTimeoutError            ``jobs.wait`` gave up before the job ended
```
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from nacs_client.types import Job

__all__ = [
    "NacsError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "JobFailedError",
    "JobCancelledError",
    "WaitTimeoutError",
    "error_from_response",
]


class NacsError(Exception):
    """Base class of every error the SDK raises on purpose."""


class APIConnectionError(NacsError):
    """The service could not be reached (refused, reset, DNS, TLS...)."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APITimeoutError(APIConnectionError):
    """A request to the service timed out (connect, read, write or pool)."""


class APIStatusError(NacsError):
    """The service answered with an error status.

    ``code`` and ``message`` come from the uniform error body
    ``{"error": {"code", "message", "details"}}``; ``details`` is whatever the
    service put there (``None`` when absent).
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        self.message = message
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.details = details
        prefix = f"HTTP {self.status_code}" + (f" {code}" if code else "")
        super().__init__(f"{prefix}: {message}")


class BadRequestError(APIStatusError):
    """400 or 422: the request was refused; ``field`` names the field when the service says."""

    @property
    def field(self) -> str | None:
        return _field_from_details(self.details)


class AuthenticationError(APIStatusError):
    """401: no API key, or one the service does not know."""


class NotFoundError(APIStatusError):
    """404: no such job for this key (another tenant's jobs are not found either)."""


class ConflictError(APIStatusError):
    """409: the idempotency key was used before with a different body, or the job's state forbids
    it."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is larger than the service accepts."""


class RateLimitError(APIStatusError):
    """429: the tenant is over its limits (retried first, honouring Retry-After)."""


class InternalServerError(APIStatusError):
    """A 5xx answer."""


class ServiceUnavailableError(InternalServerError):
    """503: the service's Redis or storage is unreachable (retried first)."""


class JobFailedError(NacsError):
    """The job ended ``failed``; ``code`` and ``message`` are the job's error."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.job_id = job.id
        self.code = job.error.code if job.error else None
        self.message = job.error.message if job.error else "the job failed without an error record"
        code = f" ({self.code})" if self.code else ""
        super().__init__(f"job {job.id} failed{code}: {self.message}")


class JobCancelledError(NacsError):
    """The job ended ``cancelled``."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.job_id = job.id
        super().__init__(f"job {job.id} was cancelled")


class WaitTimeoutError(NacsError, TimeoutError):
    """``jobs.wait`` gave up after ``timeout`` seconds; ``job`` is the last state seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        self.job_id = job.id
        self.timeout = timeout
        phase = f", {job.progress.phase}" if job.progress and job.progress.phase else ""
        super().__init__(
            f"job {job.id} did not finish within {timeout:g} s (still {job.status}{phase})"
        )


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error ``response``, with the body's code, message and details."""
    code, message, details = _parse_error_body(response)
    status = response.status_code
    error_class = _STATUS_ERRORS.get(status)
    if error_class is None:
        error_class = InternalServerError if status >= 500 else APIStatusError
    return error_class(message, response=response, code=code, details=details)


def _parse_error_body(response: httpx.Response) -> tuple[str | None, str, Any]:
    """(code, message, details) of the uniform error body; a readable fallback otherwise."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = error.get("code")
        message = error.get("message")
        return (
            str(code) if code is not None else None,
            str(message) if message else response.reason_phrase or "error",
            error.get("details"),
        )
    text = response.text.strip().replace("\n", " ")
    message = response.reason_phrase or "error"
    if text:
        message = f"{message}: {text[:200]}"
    return None, message, None


def _field_from_details(details: Any) -> str | None:
    """The bad field named in an error's details.

    Accepts ``{"field": "ratio"}``, ``{"errors": [{"field": ...}]}`` and lists of
    ``{"loc": ["body", "ratio"]}`` or ``{"field": ...}`` items (the first one wins).
    """
    if isinstance(details, dict):
        if isinstance(details.get("field"), str):
            return str(details["field"])
        for key in ("errors", "fields"):
            if key in details:
                return _field_from_details(details[key])
        return None
    if isinstance(details, list):
        for item in details:
            if isinstance(item, str):
                return item
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("field"), str):
                return str(item["field"])
            loc = item.get("loc")
            if isinstance(loc, (list, tuple)):
                parts = [str(part) for part in loc if part not in ("body", "query", "path")]
                if parts:
                    return ".".join(parts)
    return None
