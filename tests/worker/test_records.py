"""Job records: transitions, the status indexes, runs that lost their job, listing."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from tests.worker.conftest import Create
from worker.keys import Keys
from worker.pagination import decode_cursor, encode_cursor, page
from worker.records import InvalidTransition, JobResult, JobStatus, Progress, RecordStore, utc_now

REQUEST = {"dataset_uri": "file:///data/x.parquet", "ratio": 0.1, "output_uri": "file:///out"}


def test_finished_jobs_do_not_change(store: RecordStore, create: Create) -> None:
    record, _ = create("t1", REQUEST)
    store.transition(record.id, JobStatus.running, attempts=1)
    result = JobResult(output_uri="o", coreset_uri="c", manifest_uri="m", size=1)
    store.transition(record.id, JobStatus.succeeded, result=result)
    with pytest.raises(InvalidTransition):
        store.transition(record.id, JobStatus.failed)
    done = store.get(record.id)
    assert done is not None and done.status == JobStatus.succeeded and done.finished_at
    assert done.result == result
    stats = store.stats()
    assert stats["jobs"]["succeeded"] == 1 and stats["jobs"]["running"] == 0
    assert not store.redis.sismember(store.keys.tenant_active("t1"), record.id)


def test_status_indexes_follow_the_record(store: RecordStore, create: Create) -> None:
    record, _ = create("t1", REQUEST)
    keys = store.keys
    assert store.redis.sismember(keys.status("queued"), record.id)
    assert store.redis.zscore(keys.queued_since, record.id) is not None
    store.transition(record.id, JobStatus.running, attempts=1)
    assert store.redis.sismember(keys.status("running"), record.id)
    assert not store.redis.sismember(keys.status("queued"), record.id)
    assert store.redis.zscore(keys.queued_since, record.id) is None
    store.transition(record.id, JobStatus.queued)
    assert store.redis.zscore(keys.queued_since, record.id) == pytest.approx(
        store.redis.zscore(keys.tenant_jobs("t1"), record.id), abs=0.01
    )


def test_a_superseded_run_cannot_touch_the_job(store: RecordStore, create: Create) -> None:
    """Once another run owns the job, the old run's heartbeats, progress and ending are
    ignored."""
    record, _ = create("t1", REQUEST)
    store.transition(record.id, JobStatus.running, attempts=2, heartbeat_at=utc_now())
    before = store.get(record.id)
    assert store.heartbeat(record.id, attempt=1) == before
    progress = Progress(phase="selecting", fraction=0.5, message="old run")
    assert store.heartbeat(record.id, attempt=1, progress=progress) == before
    with pytest.raises(InvalidTransition):
        store.finish_run(record.id, 1, JobStatus.cancelled)
    assert store.get(record.id) == before
    finished = store.finish_run(record.id, 2, JobStatus.succeeded)
    assert finished is not None and finished.status == JobStatus.succeeded


def test_records_keep_fields_of_newer_versions(store: RecordStore, create: Create) -> None:
    record, _ = create("t1", REQUEST)
    raw = store.redis.get(store.keys.job(record.id))
    store.redis.set(store.keys.job(record.id), raw[:-1] + b',"added_later":[1,2]}')
    store.heartbeat(record.id)
    again = store.get(record.id)
    assert again is not None and again.model_extra == {"added_later": [1, 2]}


def _page(store: RecordStore, **options: object) -> tuple[list[str], str | None]:
    async def run() -> tuple[list[str], str | None]:
        client = redis.asyncio.Redis.from_url(store.settings.redis_url)
        try:
            records, cursor = await page(client, Keys(store.settings.redis_prefix), "t1", **options)
            return [record.id for record in records], cursor
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_pages_go_through_equal_timestamps(store: RecordStore, create: Create) -> None:
    ids = [create("t1", REQUEST)[0].id for _ in range(5)]
    store.redis.zadd(store.keys.tenant_jobs("t1"), dict.fromkeys(ids, 1000.0))
    store.redis.delete(store.keys.job(ids[3]))
    seen: list[str] = []
    cursor = None
    while True:
        found, cursor = _page(store, limit=2, cursor=cursor)
        seen += found
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids[:3] + ids[4:])
    assert store.redis.zscore(store.keys.tenant_jobs("t1"), ids[3]) is None, "expired ids leave"
    store.transition(ids[0], JobStatus.running, attempts=1)
    assert _page(store, status=JobStatus.running) == ([ids[0]], None)


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(12.5, "abc")) == (12.5, "abc")
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor("not-a-cursor")


def test_a_redis_without_an_append_only_file_is_named(tmp_path) -> None:
    from tests.stack import RedisServer
    from worker.records import connect, persistence_problem

    for appendonly in (False, True):
        server = RedisServer.start(tmp_path / str(appendonly), appendonly=appendonly)
        try:
            problem = persistence_problem(connect(server.url))
        finally:
            server.stop()
        if appendonly:
            assert problem is None
        else:
            assert problem is not None and "appendonly no" in problem


def test_nacs_up_runs_an_embedded_redis_with_an_append_only_file(tmp_path) -> None:
    from service.cli import _start_embedded_redis
    from worker.settings import SharedSettings

    embedded = _start_embedded_redis(SharedSettings(storage_uri=str(tmp_path / "storage")))
    try:
        assert embedded.config_get("appendonly") == {"appendonly": "yes"}
        assert embedded.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        embedded.close()
