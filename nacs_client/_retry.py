"""When to retry a request, and how long to wait before the next attempt."""

from __future__ import annotations

import random as random_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

# Statuses that say "try again later": rate limited, bad gateway, unavailable, gateway timeout.
RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by ``max_retries`` (attempts = max_retries + 1).

    The wait before retry ``n`` (0-based) is ``min(max_delay_s, initial_delay_s * 2**n)``
    scaled by a jitter factor in ``(1 - jitter, 1]`` drawn from ``random``. A
    ``Retry-After`` header, in seconds or as an HTTP date, replaces the computed
    wait; one longer than ``max_retry_after_s`` is not waited for (the error is
    raised at once, so the caller can decide).
    """

    max_retries: int = 3
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: float = 0.25
    max_retry_after_s: float = 60.0
    random: Callable[[], float] = field(default=random_module.random)
    wall_clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries: expected 0 or more, got {self.max_retries}")

    def backoff_s(self, retry: int) -> float:
        """The jittered wait before retry number ``retry`` (0 for the first retry)."""
        base = min(self.max_delay_s, self.initial_delay_s * (2**retry))
        return float(base * (1.0 - self.jitter * self.random()))

    def wait_s(self, retry: int, retry_after_s: float | None) -> float:
        return retry_after_s if retry_after_s is not None else self.backoff_s(retry)

    def retry_after_s(self, response: httpx.Response) -> float | None:
        """Seconds asked for by the response's ``Retry-After`` header, or ``None``."""
        return parse_retry_after(response.headers.get("retry-after"), now_s=self.wall_clock())


def is_retryable_exception(error: httpx.TransportError) -> bool:
    """Connection failures, timeouts and broken responses are worth another try."""
    return isinstance(
        error, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
    )


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now_s
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
