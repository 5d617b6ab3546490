"""Errors the engine raises about the data it was given.

``DataError`` is a ``ValueError`` with a stable machine-readable ``code``; the
worker turns it into a failed job that is never retried.
"""

from __future__ import annotations

from collections.abc import Callable


class DataError(ValueError):
    """The dataset cannot be used as given (missing, unreadable, wrong shape or labels)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SelectionCancelled(Exception):
    """Raised by a progress callback to stop a selection; the engine lets it through."""


def first_cause(
    error: BaseException, test: Callable[[BaseException], bool]
) -> BaseException | None:
    """The first exception in ``error``'s chain (itself, then its causes and contexts) that
    passes ``test``, or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if test(current):
            return current
        current = current.__cause__ or current.__context__
    return None
