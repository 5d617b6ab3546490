"""Test-wide setup: the tests' own Redis, and no reach into a developer's."""

from __future__ import annotations

import os

import pytest

from tests.stack import session_redis_url

# Settings built without a Redis URL (in this process or the processes it starts without
# their own) point at a port where nothing listens, never at a Redis of the machine.
os.environ["NACS_REDIS_URL"] = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The tests' Redis: a private redis-server started once per session, or the one
    ``NACS_TEST_REDIS_URL`` names."""
    return session_redis_url()
