"""Creating jobs (one script, then RQ's Queue.enqueue_call) and cancelling them."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from tests.worker.conftest import Create
from worker.enqueue import (
    IdempotencyConflict,
    OutputClaimed,
    TooManyActiveJobs,
    cancel,
    create_job,
    new_job_id,
    new_record,
    register_scripts,
)
from worker.records import JobRecord, JobStatus, RecordStore, text

REQUEST = {"dataset_uri": "file:///data/x.parquet", "ratio": 0.1, "output_uri": "file:///out"}


def test_create_records_and_enqueues_through_rq(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    record, outcome = create("t1", REQUEST)
    assert outcome is True and record.rq_job_id == f"{record.id}-1"
    assert store.get(record.id) == record
    assert queue.job_ids == [record.rq_job_id]
    rq_job = Job.fetch(record.rq_job_id, connection=store.redis, serializer=JSONSerializer)
    assert rq_job.func_name == "worker.tasks.run_job"
    assert list(rq_job.args) == [record.id, store.settings.redis_prefix]
    assert rq_job.timeout == store.settings.job_timeout_s
    assert rq_job.result_ttl == store.settings.job_ttl_s == rq_job.failure_ttl
    assert store.redis.ttl(store.keys.job(record.id)) > 6 * 24 * 3600
    assert store.redis.sismember(store.keys.tenant_active("t1"), record.id)


def test_idempotency_and_active_limit(store: RecordStore, queue: Queue, create: Create) -> None:
    first, created = create("t1", REQUEST, idempotency_key="k", body_hash="h1")
    again, replayed = create("t1", REQUEST, idempotency_key="k", body_hash="h1")
    assert created is True and replayed is False and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        create("t1", REQUEST, idempotency_key="k", body_hash="h2")
    with pytest.raises(TooManyActiveJobs):
        create("t1", REQUEST, idempotency_key="k2", body_hash="h", max_active=1)
    assert not store.redis.exists(store.keys.idempotency("t1", "k2")), "a refusal claims no key"
    assert store.redis.scard(store.keys.tenant_active("t1")) == 1
    assert store.redis.zcard(store.keys.tenant_jobs("t1")) == 1
    assert queue.job_ids == [first.rq_job_id]
    # The same key and body replay the first job, whatever the limit.
    assert create("t1", REQUEST, idempotency_key="k", body_hash="h1", max_active=1)[0] == first
    store.redis.delete(store.keys.job(first.id))
    with pytest.raises(IdempotencyConflict, match="expired"):
        create("t1", REQUEST, idempotency_key="k", body_hash="h1")


def test_a_job_whose_record_is_gone_no_longer_counts_against_the_limit(
    store: RecordStore, create: Create
) -> None:
    first, _ = create("t1", REQUEST, max_active=2)
    second, _ = create("t1", REQUEST, max_active=2)
    with pytest.raises(TooManyActiveJobs):
        create("t1", REQUEST, max_active=2)
    store.redis.delete(store.keys.job(first.id))  # expired while queued, or lost
    third, created = create("t1", REQUEST, max_active=2)
    assert created
    active = {text(member) for member in store.redis.smembers(store.keys.tenant_active("t1"))}
    assert active == {second.id, third.id}
    with pytest.raises(TooManyActiveJobs):  # the jobs that are there still count
        create("t1", REQUEST, max_active=2)


def test_a_cancel_that_reads_queued_as_the_job_starts_asks_it_to_stop(
    store: RecordStore, queue: Queue, create: Create, monkeypatch
) -> None:
    record, _ = create("t1", REQUEST)
    store.transition(record.id, JobStatus.running)  # a worker took it after cancel read it
    monkeypatch.setattr(store, "get", lambda job_id: record)
    asked = cancel(store, queue, record.id)
    assert asked.status == JobStatus.running and asked.cancel_requested
    rq_job = Job.fetch(record.rq_job_id, connection=store.redis, serializer=JSONSerializer)
    assert rq_job.get_status() != RqStatus.CANCELED  # the run stops itself, cleaning up


def test_cancel_a_queued_job_takes_it_off_the_queue(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    record, _ = create("t1", REQUEST)
    cancelled = cancel(store, queue, record.id)
    assert cancelled.status == JobStatus.cancelled and cancelled.cancel_requested
    assert queue.count == 0
    rq_job = Job.fetch(record.rq_job_id, connection=store.redis, serializer=JSONSerializer)
    assert rq_job.get_status() == RqStatus.CANCELED
    assert cancel(store, queue, record.id).status == JobStatus.cancelled, "cancel is idempotent"


def test_cancel_a_running_job_asks_it_to_stop(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    record, _ = create("t1", REQUEST)
    store.transition(record.id, JobStatus.running, attempts=1)
    asked = cancel(store, queue, record.id)
    assert asked.status == JobStatus.running and asked.cancel_requested
    assert asked.cancel_requested_at
    with pytest.raises(KeyError):
        cancel(store, queue, "no-such-job")


def test_an_output_folder_is_claimed_until_its_claim_ends(store: RecordStore) -> None:
    def create_at(output_uri: str) -> JobRecord:
        async def run() -> JobRecord:
            client = redis.asyncio.Redis.from_url(store.settings.redis_url)
            record = new_record("t1", REQUEST | {"output_uri": output_uri}, new_job_id())
            try:
                made, _ = await create_job(register_scripts(client), client, store.settings, record)
                return made
            finally:
                await client.aclose()

        return asyncio.run(run())

    first = create_at("file:///out/a")
    for overlapping in ("file:///out/a", "file:///out/a/b", "file:///out", "file:///out/"):
        with pytest.raises(OutputClaimed):
            create_at(overlapping)
    assert store.redis.zcard(store.keys.tenant_jobs("t1")) == 1, "a refusal records nothing"
    assert create_at("file:///out/ab").id != first.id
    ends = store.keys.tenant_output_ends("t1")
    assert store.redis.zscore(ends, "file:///out/a/") > time.time() + 6 * 24 * 3600
    store.redis.zadd(ends, {"file:///out/a/": time.time() - 1})
    assert create_at("file:///out/a/b").request["output_uri"] == "file:///out/a/b"
    folders = store.redis.zrange(store.keys.tenant_outputs("t1"), 0, -1)
    assert folders == [b"file:///out/a/b/", b"file:///out/ab/"], "the ended claim is gone"
