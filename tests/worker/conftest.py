"""Job records, the queue and their settings on unique keys of the tests' Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from rq import Queue

from tests.stack import delete_keys, unique_name
from worker.enqueue import create_job, enqueue, new_job_id, new_record, queue_of, register_scripts
from worker.records import JobRecord, RecordStore, connect
from worker.settings import SharedSettings


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Iterator[SharedSettings]:
    name = unique_name("worker")
    made = SharedSettings(
        redis_url=redis_url,
        redis_prefix=f"{name}:",
        queue=name,
        storage_uri=str(tmp_path / "storage"),
        allowed_uris=f"file://{tmp_path}/",
        retry_backoff_s=0.01,
        storage_retries=2,
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=5,
        max_attempts=2,
    )
    yield made
    delete_keys(redis_url, made.redis_prefix, made.queue)


@pytest.fixture
def store(settings: SharedSettings) -> RecordStore:
    return RecordStore(connect(settings.redis_url), settings)


@pytest.fixture
def queue(store: RecordStore) -> Queue:
    return queue_of(store.redis, store.settings)


Create = Callable[..., tuple[JobRecord, Any]]


@pytest.fixture
def create(store: RecordStore, queue: Queue) -> Create:
    """``create(tenant, request, idempotency_key=None, body_hash=None, max_active=None)``:
    a job made as the API makes it (``worker.enqueue.create_job``); (record, outcome). The
    request's output_uri gets the job id appended, as each job's default folder does."""

    def make(
        tenant: str,
        request: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        max_active: int | None = None,
    ) -> tuple[JobRecord, Any]:
        async def run() -> tuple[JobRecord, Any]:
            client = redis.asyncio.Redis.from_url(store.settings.redis_url)
            try:
                job_id = new_job_id()
                own = request
                if request.get("output_uri"):
                    own = request | {"output_uri": f"{request['output_uri']}/{job_id}"}
                record = new_record(tenant, own, job_id, idempotency_key, body_hash)
                script = register_scripts(client)
                made, created = await create_job(
                    script, client, store.settings, record, max_active=max_active
                )
                if created:
                    enqueue(queue, made, store.settings)
                return made, created
            finally:
                await client.aclose()

        return asyncio.run(run())

    return make
