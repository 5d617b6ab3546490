"""The reaper: lost runs, ignored cancels, queued records without a queue entry."""

from __future__ import annotations

import time

from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from tests.worker.conftest import Create
from worker.reaper import reap
from worker.records import JobStatus, RecordStore, utc_now

REQUEST = {"dataset_uri": "file:///data/x.parquet", "ratio": 0.1, "output_uri": "file:///out"}


def _stale_running(store: RecordStore, queue: Queue, create: Create, attempts: int) -> str:
    record, _ = create("t1", REQUEST)
    stale = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
    store.transition(
        record.id, JobStatus.running, attempts=attempts, started_at=stale, heartbeat_at=stale
    )
    _rq_job(store, record.rq_job_id).set_status(RqStatus.STARTED)
    queue.remove(record.rq_job_id)
    return record.id


def _rq_job(store: RecordStore, rq_job_id: str | None) -> Job:
    return Job.fetch(rq_job_id or "", connection=store.redis, serializer=JSONSerializer)


def _later(store: RecordStore) -> float:
    return time.time() + store.settings.heartbeat_timeout_s + 1


def test_a_lost_job_runs_again(store: RecordStore, queue: Queue, create: Create) -> None:
    job_id = _stale_running(store, queue, create, attempts=1)
    assert reap(store, queue) == [(job_id, "requeued")]
    record = store.get(job_id)
    assert record is not None and record.status == JobStatus.queued
    assert record.rq_job_id == f"{job_id}-2" and "heartbeat" in record.progress.message
    assert queue.job_ids == [f"{job_id}-2"]


def test_a_lost_job_without_attempts_left_fails(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    job_id = _stale_running(store, queue, create, attempts=2)
    assert reap(store, queue) == [(job_id, "failed")]
    record = store.get(job_id)
    assert record is not None and record.status == JobStatus.failed and record.finished_at
    assert record.error is not None and record.error.code == "worker_lost"
    assert "2 attempt" in record.error.message


def test_healthy_jobs_are_left_alone(store: RecordStore, queue: Queue, create: Create) -> None:
    record, _ = create("t1", REQUEST)
    now = utc_now()
    store.transition(record.id, JobStatus.running, attempts=1, started_at=now, heartbeat_at=now)
    assert reap(store, queue) == [] and reap(store, queue, now=time.time() + 1) == []
    assert store.get(record.id).status == JobStatus.running  # type: ignore[union-attr]


def test_an_ignored_cancel_is_settled(store: RecordStore, queue: Queue, create: Create) -> None:
    from worker.enqueue import cancel

    record, _ = create("t1", REQUEST)
    now = utc_now()
    store.transition(record.id, JobStatus.running, attempts=1, started_at=now, heartbeat_at=now)
    cancel(store, queue, record.id)
    assert reap(store, queue) == []
    later = time.time() + store.settings.cancel_grace_s + 1
    assert reap(store, queue, now=later) == [(record.id, "cancelled")]
    assert store.get(record.id).status == JobStatus.cancelled  # type: ignore[union-attr]


def test_a_queued_job_without_its_queue_entry_is_enqueued(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    """What a crash between the creation script and RQ's enqueue leaves behind."""
    record, _ = create("t1", REQUEST)
    _rq_job(store, record.rq_job_id).delete()
    assert queue.count == 0
    assert reap(store, queue) == [], "a young job may still be on its way to the queue"
    assert reap(store, queue, now=_later(store)) == [(record.id, "enqueued")]
    assert queue.job_ids == [f"{record.id}-1"]
    assert reap(store, queue, now=_later(store)) == [], "an enqueued job is left alone"


def test_a_horse_lost_before_the_job_started_counts_an_attempt(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    record, _ = create("t1", REQUEST)
    queue.remove(record.rq_job_id)
    _rq_job(store, record.rq_job_id).set_status(RqStatus.FAILED)
    assert reap(store, queue, now=_later(store)) == [(record.id, "requeued")]
    again = store.get(record.id)
    assert again is not None and again.attempts == 1 and again.rq_job_id == f"{record.id}-2"
    queue.remove(again.rq_job_id)
    _rq_job(store, again.rq_job_id).set_status(RqStatus.FAILED)
    assert reap(store, queue, now=_later(store)) == [(record.id, "failed")]
    failed = store.get(record.id)
    assert failed is not None and failed.error is not None
    assert failed.error.code == "worker_lost"


def test_only_jobs_queued_long_enough_are_read(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    old, new = (create("t1", REQUEST)[0] for _ in range(2))
    for record in (old, new):
        _rq_job(store, record.rq_job_id).delete()
    since = time.time() - store.settings.heartbeat_timeout_s - 1
    store.redis.zadd(store.keys.queued_since, {old.id: since})
    assert reap(store, queue) == [(old.id, "enqueued")]


def test_records_that_are_gone_leave_the_indexes(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    ids = [create("t1", REQUEST)[0].id for _ in range(3)]
    store.redis.delete(store.keys.job(ids[1]))  # expired, and its RQ job with it
    _rq_job(store, f"{ids[1]}-1").delete()
    store.redis.delete(store.keys.queued_since)  # as an older version left it
    assert reap(store, queue, now=_later(store)) == []
    assert not store.redis.sismember(store.keys.status("queued"), ids[1])
    assert store.redis.zscore(store.keys.queued_since, ids[1]) is None
    assert store.redis.zcard(store.keys.queued_since) == 2


def test_jobs_waiting_on_the_queue_are_not_read(
    store: RecordStore, queue: Queue, create: Create, monkeypatch
) -> None:
    """A long queue behind long jobs is normal: the reaper reads none of its records."""
    for _ in range(3):
        create("t1", REQUEST)
    read: list[str] = []
    get_many = store.get_many
    monkeypatch.setattr(store, "get_many", lambda ids: read.extend(ids) or get_many(ids))
    assert reap(store, queue, now=_later(store)) == []
    assert read == []


def test_a_run_past_its_deadline_is_stopped_and_fails_with_timeout(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    from worker.records import rfc3339

    record, _ = create("t1", REQUEST)
    now = time.time()
    fresh = utc_now()
    # shard jobs still waiting for a worker, heartbeats fresh: only the deadline is past
    store.transition(
        record.id, JobStatus.running, attempts=1, started_at=fresh, heartbeat_at=fresh,
        deadline_at=rfc3339(now - 1), shard_jobs=[f"{record.id}-1-fold-0"],
    )
    assert reap(store, queue, now=now) == []  # within the grace
    later = now + store.settings.heartbeat_timeout_s + 1
    assert reap(store, queue, now=later) == [(record.id, "timed out")]
    ended = store.get(record.id)
    assert ended is not None and ended.status == JobStatus.failed
    assert ended.error is not None and ended.error.code == "timeout"
    assert "NACS_JOB_TIMEOUT_S" in ended.error.message


def test_a_run_again_forgets_the_deadline_of_the_one_before(
    store: RecordStore, queue: Queue, create: Create
) -> None:
    from worker.records import rfc3339

    job_id = _stale_running(store, queue, create, attempts=1)
    store.update(job_id, lambda record: setattr(record, "deadline_at", rfc3339(time.time() + 60)))
    assert reap(store, queue) == [(job_id, "requeued")]
    record = store.get(job_id)
    assert record is not None and record.deadline_at is None
