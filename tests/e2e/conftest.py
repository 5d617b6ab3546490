"""Fixtures starting the real stack (see tests/stack.py for what they start)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import MotoServer, Stack, make_ctr_parquet, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + one worker on the shared Redis (unique keys), local storage; tenants alpha and beta."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def small_parquet(stack: Stack) -> Path:
    """4000 rows, 4 categorical fields, ~20% clicks, inside the stack's allowed folder."""
    return make_ctr_parquet(stack.tmp_dir / "data" / "small.parquet", 4000, seed=1)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slow_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset big enough that reading it takes seconds: time to cancel or kill a running job.

    Written outside the session stack's folder; tests that use it start stacks allowing its folder.
    """
    folder = tmp_path_factory.mktemp("slow")
    return make_ctr_parquet(folder / "slow.parquet", 2_500_000, seed=3, n_fields=8, vocabulary=1000)
