"""Job records, transitions, listing and the reaper against the real Redis (unique keys)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import JobStatus

from tests.stack import DEFAULT_REDIS_URL, delete_keys, unique_name
from worker.queueing import (
    RQ_TIME_FORMAT,
    IdempotencyConflict,
    InvalidTransition,
    JobStore,
    TooManyActiveJobs,
    connect,
    decode_cursor,
    encode_cursor,
    public_status,
    time_texts,
    utc_now,
    zlib_stored,
)
from worker.settings import WorkerSettings

REQUEST = {"dataset_uri": "file:///data/x.parquet", "ratio": 0.1, "method": "random", "output_uri": "file:///out"}


@pytest.fixture
def store() -> Iterator[JobStore]:
    name = unique_name("queueing")
    settings = WorkerSettings(
        redis_url=DEFAULT_REDIS_URL, redis_prefix=f"{name}:", queue=name, heartbeat_timeout_s=5, max_attempts=2
    )
    yield JobStore(connect(DEFAULT_REDIS_URL), settings)
    delete_keys(DEFAULT_REDIS_URL, settings.redis_prefix, settings.queue)


def test_public_status_maps_every_rq_status() -> None:
    public = {public_status(status) for status in JobStatus}
    assert public == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert public_status(JobStatus.STARTED) == "running"
    assert public_status(JobStatus.STOPPED) == "cancelled"
    assert public_status(None) is None


def test_create_enqueues_json_and_sets_ttls(store: JobStore) -> None:
    record, created = store.create("t1", REQUEST)
    assert created and record["status"] == "queued" and record["rq_job_id"] == f"{record['id']}-1"
    assert store.queue().count == 1
    assert store.redis.ttl(store.job_key(record["id"])) > 6 * 24 * 3600
    rq_job = store.queue().fetch_job(record["rq_job_id"])
    assert rq_job.func_name == "worker.tasks.run_job"
    assert rq_job.args == [record["id"], store.prefix] or rq_job.args == (record["id"], store.prefix)
    assert rq_job.timeout == store.settings.job_timeout_s
    assert rq_job.result_ttl == store.settings.job_ttl_s and rq_job.failure_ttl == store.settings.job_ttl_s


def test_finished_jobs_do_not_change(store: JobStore) -> None:
    record, _ = store.create("t1", REQUEST)
    store.transition(record["id"], "running", attempts=1)
    store.transition(record["id"], "succeeded", result={"size": 1})
    with pytest.raises(InvalidTransition):
        store.transition(record["id"], "failed")
    assert store.get(record["id"])["status"] == "succeeded"
    stats = store.stats()
    assert stats["jobs"]["succeeded"] == 1 and stats["jobs"]["running"] == 0


def test_idempotency_and_active_limit(store: JobStore) -> None:
    first, created = store.create("t1", REQUEST, idempotency_key="k", body_hash="h1")
    again, created_again = store.create("t1", REQUEST, idempotency_key="k", body_hash="h1")
    assert created and not created_again and again["id"] == first["id"]
    with pytest.raises(IdempotencyConflict):
        store.create("t1", REQUEST, idempotency_key="k", body_hash="h2")
    with pytest.raises(TooManyActiveJobs):
        store.create("t1", REQUEST, idempotency_key="k2", body_hash="h", max_active=1)
    assert store.redis.get(store._key("idempotency", "t1", "k2")) is None, "a refused job frees its key"
    assert store.active_count("t1") == 1


def test_list_pages_through_equal_timestamps(store: JobStore) -> None:
    ids = [store.create("t1", REQUEST)[0]["id"] for _ in range(5)]
    key = store._key("tenant", "t1", "jobs")
    store.redis.zadd(key, {job_id: 1000.0 for job_id in ids})
    seen, cursor = [], None
    while True:
        page, cursor = store.page("t1", limit=2, cursor=cursor)
        seen += [r["id"] for r in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(12.5, "abc")) == (12.5, "abc")
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor("not-a-cursor")


def _stale_running(store: JobStore, attempts: int) -> str:
    record, _ = store.create("t1", REQUEST)
    store.queue().remove(record["rq_job_id"])
    stale = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
    store.transition(record["id"], "running", attempts=attempts, started_at=stale, heartbeat_at=stale)
    return record["id"]


def test_reaper_runs_a_lost_job_again(store: JobStore) -> None:
    job_id = _stale_running(store, attempts=1)
    assert store.reap() == [(job_id, "requeued")]
    record = store.get(job_id)
    assert record["status"] == "queued" and record["rq_job_id"] == f"{job_id}-2"
    assert "heartbeat" in record["progress"]["message"]
    assert store.queue().count == 1


def test_reaper_fails_a_lost_job_without_attempts_left(store: JobStore) -> None:
    job_id = _stale_running(store, attempts=2)
    assert store.reap() == [(job_id, "failed")]
    record = store.get(job_id)
    assert record["status"] == "failed" and record["finished_at"]
    assert record["error"]["code"] == "worker_lost"
    assert "2 attempt" in record["error"]["message"]


def test_reaper_leaves_healthy_jobs_alone(store: JobStore) -> None:
    record, _ = store.create("t1", REQUEST)
    store.transition(record["id"], "running", attempts=1, started_at=utc_now(), heartbeat_at=utc_now())
    assert store.reap() == []
    assert store.get(record["id"])["status"] == "running"


def test_reaper_settles_an_ignored_cancel(store: JobStore) -> None:
    record, _ = store.create("t1", REQUEST)
    store.transition(record["id"], "running", attempts=1, started_at=utc_now(), heartbeat_at=utc_now())
    store.request_cancel(record["id"])
    assert store.reap() == []
    assert store.reap(now=time.time() + store.settings.cancel_grace_s + 1) == [(record["id"], "cancelled")]
    assert store.get(record["id"])["status"] == "cancelled"


def test_reaper_enqueues_a_queued_job_that_lost_its_queue_entry(store: JobStore) -> None:
    record, _ = store.create("t1", REQUEST)
    store.queue().remove(record["rq_job_id"])
    store.redis.delete(f"rq:job:{record['rq_job_id']}")
    assert store.reap() == [], "a young job may still be on its way to the queue"
    later = time.time() + store.settings.heartbeat_timeout_s + 1
    assert store.reap(now=later) == [(record["id"], "enqueued")]
    assert store.queue().count == 1
    assert store.reap(now=later) == [], "an enqueued job is left alone"


def test_reaper_counts_a_horse_lost_before_the_job_started(store: JobStore) -> None:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    record, _ = store.create("t1", REQUEST)
    store.queue().remove(record["rq_job_id"])
    Job.fetch(record["rq_job_id"], connection=store.redis, serializer=JSONSerializer).set_status(JobStatus.FAILED)
    later = time.time() + store.settings.heartbeat_timeout_s + 1
    assert store.reap(now=later) == [(record["id"], "requeued")]
    again = store.get(record["id"])
    assert again["attempts"] == 1 and again["rq_job_id"] == f"{record['id']}-2"
    Job.fetch(again["rq_job_id"], connection=store.redis, serializer=JSONSerializer).set_status(JobStatus.FAILED)
    assert store.reap(now=later) == [(record["id"], "failed")]
    assert store.get(record["id"])["error"]["code"] == "worker_lost"


def test_a_superseded_run_cannot_touch_the_job(store: JobStore) -> None:
    """After the reaper gives a job to a new run, the old run's heartbeats, progress and ending are ignored."""
    job_id = _stale_running(store, attempts=1)
    assert store.reap() == [(job_id, "requeued")]
    store.transition(job_id, "running", attempts=2, heartbeat_at=utc_now())
    before = store.get(job_id)
    assert store.heartbeat(job_id, attempt=1) == before
    assert store.set_progress(job_id, "selecting", 0.5, "old run", attempt=1) == before
    with pytest.raises(InvalidTransition):
        store.finish_run(job_id, 1, "cancelled")
    assert store.get(job_id) == before
    assert store.finish_run(job_id, 2, "succeeded", result={"size": 3})["status"] == "succeeded"


def test_create_enqueues_in_the_records_transaction(store: JobStore) -> None:
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    record, created = store.create("alpha", REQUEST, max_active=5)
    queue = Queue(store.settings.queue, connection=store.redis, serializer=JSONSerializer)
    assert created and queue.job_ids == [record["rq_job_id"]]
    rq_job = Job.fetch(record["rq_job_id"], connection=store.redis, serializer=JSONSerializer)
    assert rq_job.timeout == store.settings.job_timeout_s and rq_job.args == [record["id"], store.prefix]
    assert store.redis.sismember(store._key("tenant", "alpha", "active"), record["id"])


def test_reaper_reads_many_jobs_in_batches(store: JobStore) -> None:
    ids = [store.create("alpha", REQUEST)[0]["id"] for _ in range(5)]
    store.redis.delete(store.job_key(ids[1]))
    for job_id in ids[2:4]:  # enqueues cut short: no RQ job
        rq_job_id = store.get(job_id)["rq_job_id"]
        store.queue().remove(rq_job_id)
        store.redis.delete(f"rq:job:{rq_job_id}")
    later = time.time() + store.settings.heartbeat_timeout_s + 1
    indexes = (store._key("status", "queued"), store._key("queued_since"))
    found = list(store._indexed(ids, indexes, "queued", batch=2))
    assert sorted(job_id for job_id, _, _ in found) == sorted(ids[:1] + ids[2:])
    assert not store.redis.sismember(indexes[0], ids[1]), "a record that is gone leaves the index"
    assert store.redis.zscore(indexes[1], ids[1]) is None
    assert sorted(store.reap(now=later)) == sorted((job_id, "enqueued") for job_id in ids[2:4])


def test_rq_job_written_directly_is_the_one_rq_writes(store: JobStore) -> None:
    """``rq_job_fields`` stands in for ``Queue.enqueue_call``: the same hash, field by field, but for the times."""
    recorder = store.redis.pipeline(transaction=True)
    recorder.multi()
    store.queue().enqueue_call(
        "worker.tasks.run_job",
        args=("abc", store.prefix),
        job_id="abc-1",
        pipeline=recorder,
        timeout=store.settings.job_timeout_s,
        result_ttl=store.settings.job_ttl_s,
        failure_ttl=store.settings.job_ttl_s,
        ttl=store.settings.job_ttl_s,
        description="nacs job abc",
    )
    rq_fields: dict[str, object] = {}
    rq_other = []
    for args, _options in recorder.command_stack:
        if args[0] == "HSET":
            pairs = args[2:]
            rq_fields |= {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
        elif args[0] != "MULTI":
            rq_other.append(tuple(args))
    recorder.reset()

    ours = store.rq_job_fields("abc")
    our_fields = dict(zip(ours[::2], ours[1::2], strict=True))
    assert set(our_fields) == set(rq_fields)
    times = {"created_at", "enqueued_at"}
    encode = store.redis.connection_pool.get_encoder().encode
    # The payload is the same JSON, in a zlib stream RQ reads the same way (Job.restore: zlib.decompress).
    assert zlib.decompress(our_fields["data"]) == zlib.decompress(rq_fields["data"])
    assert {k: encode(v) for k, v in our_fields.items() if k not in times | {"data"}} == {
        k: encode(v) for k, v in rq_fields.items() if k not in times | {"data"}
    }
    for field in times:
        assert len(our_fields[field]) == len(rq_fields[field]) and our_fields[field].endswith("Z")

    commands = store.rq_job_commands("abc", "abc-1")
    assert commands[0] == ("SADD", "rq:queues", f"rq:queue:{store.settings.queue}")
    assert commands[-1] == ("RPUSH", f"rq:queue:{store.settings.queue}", "abc-1")
    assert ("EXPIRE", "rq:job:abc-1", store.settings.job_ttl_s) in commands
    # RQ also expires the job's dependents and dependencies keys, which a job without them never has.
    assert {c for c in rq_other if c[0] != "EXPIRE"} <= set(commands)


def test_too_many_active_jobs_writes_nothing(store: JobStore) -> None:
    first, _ = store.create("alpha", REQUEST, idempotency_key="k1", body_hash="h1", max_active=1)
    with pytest.raises(TooManyActiveJobs):
        store.create("alpha", REQUEST, idempotency_key="k2", body_hash="h2", max_active=1)
    assert store.queue().job_ids == [first["rq_job_id"]]
    assert store.redis.scard(store._key("tenant", "alpha", "active")) == 1
    assert store.redis.zcard(store._key("tenant", "alpha", "jobs")) == 1
    assert not store.redis.exists(store._key("idempotency", "alpha", "k2")), "the refused request's claim is released"
    # The same key with the same body is a replay of the first job, whatever the limit.
    assert store.create("alpha", REQUEST, idempotency_key="k1", body_hash="h1", max_active=1) == (first, False)


def test_script_is_sent_whole_when_redis_lacks_it(store: JobStore) -> None:
    from worker.queueing import Script

    script = Script(f"-- {store.prefix}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = store._key("counter")
    assert store.redis.script_exists(script.sha) == [False]
    assert store._run_script(script, [key], [2]) == 2  # EVAL
    assert store.redis.script_exists(script.sha) == [True]
    assert store._run_script(script, [key], [3]) == 5  # EVALSHA


def test_reaper_reads_only_jobs_queued_long_enough(store: JobStore) -> None:
    since_key = store._key("queued_since")
    old, new = (store.create("alpha", REQUEST)[0]["id"] for _ in range(2))
    assert store.redis.zcard(since_key) == 2
    for job_id in (old, new):  # both queue entries lost
        rq_job_id = store.get(job_id)["rq_job_id"]
        store.queue().remove(rq_job_id)
        store.redis.delete(f"rq:job:{rq_job_id}")
    store.redis.zadd(since_key, {old: time.time() - store.settings.heartbeat_timeout_s - 1})
    assert store.reap() == [(old, "enqueued")], "the job queued a moment ago is not read yet"
    store.transition(old, "running", attempts=1)
    store.request_cancel(new)
    assert store.redis.zcard(since_key) == 0, "a job leaves queued_since when it starts or ends"
    store.transition(old, "queued")
    assert store.redis.zscore(since_key, old) == pytest.approx(store.redis.zscore(store._key("tenant", "alpha", "jobs"), old), abs=0.01)


def test_reaper_indexes_queued_jobs_recorded_without_queued_since(store: JobStore) -> None:
    """Jobs recorded before ``queued_since`` existed are indexed by their creation time on the first reap."""
    since_key = store._key("queued_since")
    ids = [store.create("alpha", REQUEST)[0]["id"] for _ in range(3)]
    store.redis.delete(since_key)
    store.redis.delete(store.job_key(ids[2]))
    lost = store.get(ids[0])["rq_job_id"]
    store.queue().remove(lost)
    store.redis.delete(f"rq:job:{lost}")
    later = time.time() + store.settings.heartbeat_timeout_s + 1
    assert store.reap(now=later) == [(ids[0], "enqueued")]
    assert sorted(m.decode() for m in store.redis.zrange(since_key, 0, -1)) == sorted(ids[:2])
    assert not store.redis.sismember(store._key("status", "queued"), ids[2]), "a record that is gone leaves the index"


@pytest.mark.parametrize("odd", ["", ' "quoted" \\ été\n'])
def test_creation_script_writes_the_rq_job_fields(store: JobStore, odd: str) -> None:
    """The creation script carries RQ's hash with the store's fields written in as Lua literals
    (any queue name), and writes what ``rq_job_fields`` gives."""
    settings = store.settings.model_copy(update={"queue": store.settings.queue + odd})
    odd_store = JobStore(store.redis, settings)
    try:
        record, _ = odd_store.create("alpha", REQUEST)
        stored = store.redis.hgetall(f"rq:job:{record['rq_job_id']}")
        fields = odd_store.rq_job_fields(record["id"])
        encode = store.redis.connection_pool.get_encoder().encode
        expected = {encode(k): encode(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}
        times = {b"created_at", b"enqueued_at"}
        assert {k: v for k, v in stored.items() if k not in times} == {k: v for k, v in expected.items() if k not in times}
        assert stored[b"created_at"] == stored[b"enqueued_at"] and len(stored[b"created_at"]) == len(expected[b"created_at"])
        assert stored[b"origin"] == settings.queue.encode()
        assert odd_store.queue().job_ids == [record["rq_job_id"]]
    finally:
        delete_keys(DEFAULT_REDIS_URL, settings.redis_prefix, settings.queue)


def test_reaper_reads_rq_statuses_from_the_hashes(store: JobStore) -> None:
    first, second = (store.create("alpha", REQUEST)[0] for _ in range(2))
    store.redis.hset(f"rq:job:{second['rq_job_id']}", "status", JobStatus.STARTED.value)
    ids = [first["rq_job_id"], None, second["rq_job_id"], "no-such-job-1"]
    assert store._rq_public_statuses(ids) == ["queued", None, "running", None]


@pytest.mark.parametrize("size", [0, 1, 97, 4096, 0x8000, 0x8001, 100_000])
def test_zlib_stored_is_zlib_level_0(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert zlib_stored(data) == zlib.compress(data, 0)
    assert zlib.decompress(zlib_stored(data)) == data


# The epoch, a whole second, within a second, its last nanosecond, and 2100 (past 32-bit time).
INSTANTS = [0, 999, 1_764_464_789_000_000_000, 1_764_464_789_123_456_789, 1_764_464_789_999_999_999, 4_102_444_800_500_000_001]


@pytest.mark.parametrize("ns", INSTANTS)
def test_time_texts_are_the_datetime_formats(ns: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ns // 1000)
    seconds, created_at, rq_stamp = time_texts(ns)
    assert seconds == ns / 1e9
    assert created_at == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert rq_stamp == moment.strftime(RQ_TIME_FORMAT)


def test_creation_reads_the_time_once(store: JobStore) -> None:
    """The record, its index score and RQ's job hash carry one instant."""
    record, _ = store.create("alpha", REQUEST)
    score = store.redis.zscore(store._key("tenant", "alpha", "jobs"), record["id"])
    rq_stamp = store.redis.hget(f"rq:job:{record['rq_job_id']}", "created_at").decode()
    assert rq_stamp[:23] == record["created_at"][:23] and rq_stamp.endswith("Z")
    stamp_seconds = datetime.strptime(rq_stamp, RQ_TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    assert stamp_seconds == pytest.approx(score, abs=1e-5)
    assert len(record["id"]) == 32 and int(record["id"], 16) >= 0
