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
            ConnectTimeoutError,
            EndpointConnectionError,
            HTTPClientError,
            ReadTimeoutError,
        )

        if isinstance(
            error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, HTTPClientError)
        ):
            return True
    except ImportError:
        pass
    try:
        import aiohttp

        if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
            return True
    except ImportError:
        pass
    if isinstance(error, OSError):
        cause = error.__cause__ or error.__context__
        if cause is not None and cause is not error:
            return is_transient(cause)
        return error.errno in _TRANSIENT_ERRNOS
    return False


_TRANSIENT_ERRNOS = {
    104,  # ECONNRESET
    110,  # ETIMEDOUT
    111,  # ECONNREFUSED
    112,  # EHOSTDOWN
    113,  # EHOSTUNREACH
    101,  # ENETUNREACH
}

__all__ = ["DataError", "JobFailed", "StorageUnavailable", "is_transient"]
