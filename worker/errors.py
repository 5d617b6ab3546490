"""How a job can fail, and which failures are worth a retry."""

from __future__ import annotations

import asyncio
import socket

from nacs_engine.errors import DataError


class JobFailed(Exception):
    """A job ends ``failed`` with this code and message. Never retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StorageUnavailable(Exception):
    """The store or the network did not answer; the step is worth a retry."""


_NOT_TRANSIENT_OS_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` looks like a passing storage or network fault."""
    if isinstance(error, (StorageUnavailable, TimeoutError, asyncio.TimeoutError, socket.timeout)):
        return True
    if isinstance(error, ConnectionError):
        return True
    if isinstance(error, _NOT_TRANSIENT_OS_ERRORS):
        return False
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            HTTPClientError,
            ReadTimeoutError,
        )

        if isinstance(
            error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, HTTPClientError)
        ):
            return True
        if isinstance(error, ClientError):
            reply = error.response or {}
            status = reply.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = reply.get("Error", {}).get("Code")
            return _busy_status(status) or code in _TRANSIENT_S3_CODES
    except ImportError:
        pass
    try:
        import aiohttp

        if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
            return True
        if isinstance(error, aiohttp.ClientResponseError):
            return _busy_status(error.status)
    except ImportError:
        pass
    if isinstance(error, OSError):
        # s3fs's errors carry the store's reply as their cause: it decides (s3fs gives
        # SlowDown and a 409 Conflict the same errno)
        cause = error.__cause__ or error.__context__
        if cause is not None and cause is not error:
            return is_transient(cause)
        return error.errno in _TRANSIENT_ERRNOS
    return False


def _busy_status(status: object) -> bool:
    """An HTTP status that says: the server is busy or did not answer in time, ask again
    (not 501, an operation the store does not have)."""
    return status in (429, 500, 502, 503, 504)


_TRANSIENT_ERRNOS = {
    104,  # ECONNRESET
    110,  # ETIMEDOUT
    111,  # ECONNREFUSED
    112,  # EHOSTDOWN
    113,  # EHOSTUNREACH
    101,  # ENETUNREACH
}
# S3's error codes for "slow down" and "try again" (some come with a 4xx status).
_TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
     "ThrottlingException", "RequestLimitExceeded"}
)

__all__ = ["DataError", "JobFailed", "StorageUnavailable", "is_transient"]
