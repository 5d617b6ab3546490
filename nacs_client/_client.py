"""``Client`` and ``AsyncClient``: the same surface over ``httpx.Client`` and ``httpx.AsyncClient``.

Both run the operations of :mod:`nacs_client._operations`; they differ only in
how a request is sent and how a pause is taken.
"""

from __future__ import annotations

import inspect
import os
import random as random_module
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from nacs_client._operations import Endpoint, Operation, Send, Sleep
from nacs_client._retry import RetryPolicy
from nacs_client.resources.jobs import AsyncJobs, Jobs

__all__ = ["Client", "AsyncClient", "DEFAULT_BASE_URL", "DEFAULT_TIMEOUT"]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
BASE_URL_ENV = "NACS_BASE_URL"
API_KEY_ENV = "NACS_API_KEY"


def _version() -> str:
    try:
        return metadata.version("nacs")
    except metadata.PackageNotFoundError:
        return "0"


class _BaseClient:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        max_retries: int,
        clock: Callable[[], float] | None,
        random: Callable[[], float] | None,
        storage_options: Mapping[str, Any] | None,
    ) -> None:
        base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http:// or https:// URL, got {base_url!r}")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected a whole number >= 0, got {max_retries!r}")
        headers = {"Accept": "application/json", "User-Agent": f"nacs-client/{_version()}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.storage_options = dict(storage_options or {})
        self._endpoint = Endpoint(
            base_url=self.base_url,
            headers=headers,
            retry=RetryPolicy(max_retries=max_retries, random=random or random_module.random),
            clock=clock or time.monotonic,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class Client(_BaseClient):
    """The NaCS service, synchronously.

    ``base_url`` and ``api_key`` default to ``$NACS_BASE_URL`` (else
    ``http://127.0.0.1:8000``) and ``$NACS_API_KEY``. Transient failures
    (connection errors, timeouts, 429, 502, 503, 504) are retried up to
    ``max_retries`` times with jittered exponential backoff, honouring
    ``Retry-After``. ``transport`` replaces the HTTP transport (for example
    ``httpx.MockTransport``); ``sleep``, ``clock`` and ``random`` replace
    ``time.sleep``, ``time.monotonic`` and ``random.random``; ``storage_options``
    are passed to fsspec when reading results.

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        random: Callable[[], float] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            max_retries=max_retries,
            clock=clock,
            random=random,
            storage_options=storage_options,
        )
        self._http = httpx.Client(transport=transport, timeout=timeout)
        self._sleep = sleep or time.sleep
        self.jobs = Jobs(self)

    def _run(self, operation: Operation[T]) -> T:
        """Drive ``operation``: send its requests and take its pauses until it returns."""
        try:
            effect = next(operation)
            while True:
                if isinstance(effect, Send):
                    try:
                        outcome: Any = self._http.send(effect.request)
                    except httpx.TransportError as error:
                        outcome = error
                    effect = operation.send(outcome)
                elif isinstance(effect, Sleep):
                    self._sleep(effect.seconds)
                    effect = operation.send(None)
                else:  # pragma: no cover - the operations yield only these two
                    raise TypeError(f"unknown effect {effect!r}")
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            operation.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """The NaCS service, with ``async``/``await``; the same surface and defaults as :class:`Client`.

    ``sleep`` may be a coroutine function or a plain function (default ``anyio.sleep``).
    Use it as an async context manager, or ``await client.close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] | None = None,
        random: Callable[[], float] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            max_retries=max_retries,
            clock=clock,
            random=random,
            storage_options=storage_options,
        )
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout)
        self._sleep = sleep or _anyio_sleep
        self.jobs = AsyncJobs(self)

    async def _run(self, operation: Operation[T]) -> T:
        """Drive ``operation``: send its requests and take its pauses until it returns."""
        try:
            effect = next(operation)
            while True:
                if isinstance(effect, Send):
                    try:
                        outcome: Any = await self._http.send(effect.request)
                    except httpx.TransportError as error:
                        outcome = error
                    effect = operation.send(outcome)
                elif isinstance(effect, Sleep):
                    pause = self._sleep(effect.seconds)
                    if inspect.isawaitable(pause):
                        await pause
                    effect = operation.send(None)
                else:  # pragma: no cover - the operations yield only these two
                    raise TypeError(f"unknown effect {effect!r}")
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            operation.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _anyio_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)
