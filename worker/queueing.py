"""Job records in Redis and the RQ queue that carries job ids to the workers.

Each job has our own JSON record at ``{prefix}job:{id}`` (it outlives RQ's
short-lived job hashes by days); RQ only carries the job id, serialised as
JSON. Keys, all under the configured prefix:

- ``job:{id}``: the record (JSON), expiring ``job_ttl_s`` after its last change.
- ``tenant:{tenant}:jobs``: sorted set of the tenant's job ids by creation time.
- ``tenant:{tenant}:active``: set of the tenant's queued and running job ids.
- ``status:queued``, ``status:running``: sets of active job ids (the reaper's view).
- ``queued_since``: sorted set of the queued job ids by creation time, so that the reaper
  reads only the records of jobs queued long enough to check, however many wait.
- ``idempotency:{tenant}:{key digest}``: the job a key made, and the body hash.
- ``finished``: hash of finished-job counts by status; ``phase_seconds``: time per phase.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

import pydantic_core
import redis
import redis.asyncio
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from worker.settings import WorkerSettings
from worker.spec import ACTIVE_STATUSES, FINISHED_STATUSES, PUBLIC_STATUSES

log = logging.getLogger(__name__)

TASK = "worker.tasks.run_job"
IDEMPOTENCY_TTL_S = 24 * 3600
# RQ's key names and time format (rq.queue.Queue, rq.job.Job, rq.utils.utcformat).
RQ_QUEUES_KEY = Queue.redis_queues_keys
RQ_QUEUE_PREFIX = Queue.redis_queue_namespace_prefix
RQ_JOB_PREFIX = Job.redis_job_namespace_prefix
RQ_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """The current time in RFC 3339 (UTC, milliseconds, truncated)."""
    return time_texts(time.time_ns())[1]


def creation_times() -> tuple[float, str, str]:
    """The current time, read once, in the three forms a new job records: seconds since the epoch
    (the index scores), ``utc_now``'s form (the record's created_at) and ``RQ_TIME_FORMAT`` (RQ's
    job hash)."""
    return time_texts(time.time_ns())


def time_texts(ns: int) -> tuple[float, str, str]:
    """``creation_times`` of the instant ``ns`` nanoseconds after the epoch. Both texts truncate,
    as ``datetime.now`` and ``isoformat`` do; the date and time of day are formatted once per second."""
    seconds, rest = divmod(ns, 1_000_000_000)
    whole = _utc_second(seconds)
    micros = rest // 1000
    return ns / 1e9, f"{whole}.{micros // 1000:03d}Z", f"{whole}.{micros:06d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def public_status(rq_status: JobStatus | str | None) -> str | None:
    """The public status an RQ job status stands for (RQ's own names never reach the wire)."""
    if rq_status is None:
        return None
    value = rq_status.value if isinstance(rq_status, JobStatus) else str(rq_status)
    return {
        "created": "queued",
        "queued": "queued",
        "deferred": "queued",
        "scheduled": "queued",
        "rate_limited": "queued",
        "ready_to_enqueue": "queued",
        "started": "running",
        "finished": "succeeded",
        "failed": "failed",
        "stopped": "cancelled",
        "canceled": "cancelled",
    }.get(value)


def connect(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A Redis client (bytes responses, as RQ needs) with bounded timeouts."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 10.0), health_check_interval=30
    )


def connect_async(url: str, *, timeout_s: float = 5.0) -> redis.asyncio.Redis:
    """An asyncio Redis client with the same timeouts as ``connect``."""
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 10.0), health_check_interval=30
    )


class InvalidTransition(Exception):
    """The job is already finished; its status cannot change."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(f"job {record['id']} is already {record['status']}")
        self.record = record


class JobStore:
    """Reads and writes job records and puts job ids on the queue."""

    def __init__(self, connection: redis.Redis, settings: WorkerSettings) -> None:
        self.redis = connection
        self.settings = settings
        self.prefix = settings.redis_prefix
        self._queue: Queue | None = None

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> JobStore:
        return cls(connect(settings.redis_url), settings)

    # keys
    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    def queue(self) -> Queue:
        """The RQ queue (one object per store: it caches the server version RQ asks for)."""
        if self._queue is None:
            self._queue = Queue(self.settings.queue, connection=self.redis, serializer=JSONSerializer)
        return self._queue

    # records
    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.job_key(job_id))
        return json.loads(raw) if raw else None

    def create(
        self,
        tenant: str,
        request: dict[str, Any],
        *,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        max_active: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record and enqueue a new job; with an idempotency key, return the key's job instead.

        Returns (record, created). Raises IdempotencyConflict when the key was
        used with a different body, TooManyActiveJobs when the tenant already
        has ``max_active`` queued or running jobs. One round trip (see ``Creation``).
        """
        plan = self.plan_creation(
            tenant, request, job_id=job_id, idempotency_key=idempotency_key, body_hash=body_hash, max_active=max_active
        )
        outcome = plan.outcome(self._run_script(self.creation_script, plan.keys, plan.args))
        if outcome == "replay":
            return self.replay(plan.claim_key, body_hash), False  # type: ignore[arg-type]
        if outcome == "too_many":
            raise TooManyActiveJobs(max_active)  # type: ignore[arg-type]
        return plan.record, True

    def plan_creation(
        self,
        tenant: str,
        request: dict[str, Any],
        *,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        max_active: int | None = None,
    ) -> Creation:
        """The script call that creates a job, for a caller that sends it itself (see ``Creation``)."""
        return Creation(self, tenant, request, job_id or new_job_id(), idempotency_key, body_hash, max_active)

    def _run_script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL when Redis does not hold the script yet (it keeps it from then on)."""
        try:
            return self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return self.redis.eval(script.source, len(keys), *keys, *args)

    def rq_job_commands(self, job_id: str, rq_job_id: str) -> list[tuple[Any, ...]]:
        """The commands that put ``rq_job_id`` on the queue, to run in one MULTI/EXEC."""
        queue_key = RQ_QUEUE_PREFIX + self.settings.queue
        ttl = self.settings.job_ttl_s
        return [
            ("SADD", RQ_QUEUES_KEY, queue_key),
            ("HSET", RQ_JOB_PREFIX + rq_job_id, *self.rq_job_fields(job_id)),
            ("EXPIRE", RQ_JOB_PREFIX + rq_job_id, ttl),
            ("RPUSH", queue_key, rq_job_id),
        ]

    def rq_job_fields(self, job_id: str) -> list[Any]:
        """RQ's job hash for a run of ``job_id``, as field, value, ...: what ``Queue.enqueue_call``
        writes for ``run_job(job_id, prefix)`` with the JSON serializer, our timeout and TTLs and
        no callbacks, retries or dependencies (a test holds the two equal). Written here rather
        than through RQ's Job object, which costs a submission several times the rest of its work."""
        return self._rq_job_hash(*self.rq_job_values(job_id))

    def rq_job_values(self, job_id: str, stamp: str | None = None) -> tuple[str, bytes, str]:
        """What differs between the RQ job hashes of two jobs: the time (``RQ_TIME_FORMAT``; now
        when not given), the payload, the description."""
        if stamp is None:
            stamp = creation_times()[2]
        # RQ stores (function, instance, args, kwargs) through its serializer, then zlib: here
        # json.dumps's text of that list (the job id put between its fixed parts), in a zlib
        # stream that RQ's zlib.decompress reads as it reads its own.
        before, after = self._payload_parts
        data = zlib_stored((before + encode_basestring_ascii(job_id) + after).encode())
        return stamp, data, f"nacs job {job_id}"

    @functools.cached_property
    def _payload_parts(self) -> tuple[str, str]:
        """``json.dumps([TASK, None, [job_id, prefix], {}])`` before and after the job id's text."""
        mark = "\0"
        before, after = json.dumps([TASK, None, [mark, self.prefix], {}]).split(json.dumps(mark), 1)
        return before, after

    @functools.cached_property
    def _fixed_keys(self) -> tuple[str, str, str]:
        """The keys every creation writes: the queued index, ``queued_since`` and RQ's queue."""
        return self._key("status", "queued"), self._key("queued_since"), RQ_QUEUE_PREFIX + self.settings.queue

    def _rq_job_hash(self, stamp: str, data: Any, description: str) -> list[Any]:
        ttl = self.settings.job_ttl_s
        return [
            "created_at", stamp,
            "data", data,
            "success_callback_name", "",
            "failure_callback_name", "",
            "stopped_callback_name", "",
            "started_at", "",
            "ended_at", "",
            "last_heartbeat", "",
            "worker_name", "",
            "group_id", "",
            "origin", self.settings.queue,
            "description", description,
            "enqueued_at", stamp,
            "timeout", self.settings.job_timeout_s,
            "result_ttl", ttl,
            "failure_ttl", ttl,
            "status", "queued",
            "ttl", ttl,
        ]  # fmt: skip

    @functools.cached_property
    def creation_script(self) -> Script:
        """``CREATE_SCRIPT`` with RQ's job hash written in: the fields this store's settings fix
        as Lua literals, so that each job sends only its time, payload and description
        (ARGV[11], ARGV[12], ARGV[13]); the hash is still the one ``rq_job_fields`` gives."""
        marks = {"\0stamp": "ARGV[11]", "\0data": "ARGV[12]", "\0description": "ARGV[13]"}
        fields = self._rq_job_hash("\0stamp", "\0data", "\0description")
        lua = ", ".join(marks[value] if value in marks else _lua_string(value) for value in fields)
        return Script(CREATE_SCRIPT.replace("RQ_JOB_HASH", lua))

    def replay(self, key: str, body_hash: str | None) -> dict[str, Any]:
        """The job an idempotency claim ``key`` names (waiting briefly while it is being created).

        Raises IdempotencyConflict when the claim was made with another body, or its job is not there.
        """
        for _ in range(50):
            claim = json.loads(self.redis.get(key) or b"null")
            if claim is None:
                break
            if claim["body_hash"] != body_hash:
                raise IdempotencyConflict()
            record = self.get(claim["job_id"])
            if record is not None:
                return record
            time.sleep(0.02)
        raise IdempotencyConflict("the job this Idempotency-Key made is being created or has expired; retry later")

    def enqueue(self, job_id: str) -> dict[str, Any]:
        """Put the job on the RQ queue (a fresh RQ job per attempt) and record its RQ id."""
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        rq_job_id = f"{job_id}-{record['attempts'] + 1}"
        self.update(job_id, lambda r: r.update(rq_job_id=rq_job_id))
        self._put_on_queue(job_id, rq_job_id)
        return self.get(job_id) or record

    def _put_on_queue(self, job_id: str, rq_job_id: str) -> None:
        """Enqueue the RQ job ``rq_job_id`` (one MULTI/EXEC)."""
        pipe = self.redis.pipeline(transaction=True)
        for command in self.rq_job_commands(job_id, rq_job_id):
            pipe.execute_command(*command)
        pipe.execute()

    def update(self, job_id: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
        """Apply ``change`` to the record atomically (optimistic lock); None if the record is gone.

        ``change`` may raise LeaveUnchanged to write nothing (the record as read is returned).
        """
        key = self.job_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.reset()
                        return None
                    record = json.loads(raw)
                    before = record["status"]
                    try:
                        change(record)
                    except LeaveUnchanged:
                        pipe.reset()
                        return json.loads(raw)
                    pipe.multi()
                    pipe.set(key, json.dumps(record), ex=self.settings.job_ttl_s)
                    if record["status"] != before:
                        self._index_status(pipe, record, before)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def _index_status(self, pipe: Any, record: dict[str, Any], before: str) -> None:
        job_id, after = record["id"], record["status"]
        for status in ACTIVE_STATUSES:
            if status != after:
                pipe.srem(self._key("status", status), job_id)
        if after in ACTIVE_STATUSES:
            pipe.sadd(self._key("status", after), job_id)
        if after == "queued":
            pipe.zadd(self._key("queued_since"), {job_id: parse_time(record["created_at"]) or time.time()})
        else:
            pipe.zrem(self._key("queued_since"), job_id)
        if after in FINISHED_STATUSES:
            pipe.srem(self._key("tenant", record["tenant"], "active"), job_id)
            pipe.hincrby(self._key("finished"), after, 1)

    def transition(self, job_id: str, status: str, **fields: Any) -> dict[str, Any] | None:
        """Move an active job to ``status`` and set ``fields``; a finished job raises InvalidTransition."""
        assert status in PUBLIC_STATUSES

        def change(record: dict[str, Any]) -> None:
            if record["status"] in FINISHED_STATUSES:
                raise InvalidTransition(record)
            record["status"] = status
            if status in FINISHED_STATUSES:
                record["finished_at"] = utc_now()
            record.update(fields)

        return self.update(job_id, change)

    # progress and heartbeats
    def set_progress(
        self, job_id: str, phase: str, fraction: float, message: str, *, attempt: int | None = None
    ) -> dict[str, Any] | None:
        """Write the progress of the run ``attempt`` (nothing when another run owns the job now)."""

        def change(record: dict[str, Any]) -> None:
            _check_owner(record, attempt)
            record["progress"] = {
                "phase": phase,
                "fraction": round(min(max(float(fraction), 0.0), 1.0), 4),
                "message": message,
            }
            record["heartbeat_at"] = utc_now()

        return self.update(job_id, change)

    def heartbeat(self, job_id: str, *, attempt: int | None = None) -> dict[str, Any] | None:
        """Mark the run ``attempt`` alive (nothing when another run owns the job now)."""

        def change(record: dict[str, Any]) -> None:
            _check_owner(record, attempt)
            record["heartbeat_at"] = utc_now()

        return self.update(job_id, change)

    def finish_run(self, job_id: str, attempt: int, status: str, **fields: Any) -> dict[str, Any] | None:
        """End the run ``attempt`` with ``status``; raises InvalidTransition when the job is
        finished or another run owns it (the reaper gave it to a new run)."""

        def change(record: dict[str, Any]) -> None:
            if record["status"] != "running" or record["attempts"] != attempt:
                raise InvalidTransition(record)
            record["status"] = status
            record["finished_at"] = utc_now()
            record.update(fields)

        return self.update(job_id, change)

    def add_phase_seconds(self, phase_seconds: dict[str, float]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for phase, seconds in phase_seconds.items():
            pipe.hincrbyfloat(self._key("phase_seconds"), f"{phase}:sum", float(seconds))
            pipe.hincrby(self._key("phase_seconds"), f"{phase}:count", 1)
        pipe.execute()

    # cancel
    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once; ask a running one to stop. Raises InvalidTransition if finished."""
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        if record["status"] == "queued":
            rq_job_id = record.get("rq_job_id")
            try:
                record = self.transition(
                    job_id,
                    "cancelled",
                    cancel_requested=True,
                    progress=record["progress"] | {"message": "cancelled before it started"},
                ) or record
            except InvalidTransition as error:
                return error.record
            if rq_job_id:
                self.queue().remove(rq_job_id)
                try:
                    Job.fetch(rq_job_id, connection=self.redis, serializer=JSONSerializer).cancel()
                except Exception:  # noqa: BLE001 - the RQ job may be gone already; our record decides
                    pass
            return record

        def change(r: dict[str, Any]) -> None:
            if r["status"] in FINISHED_STATUSES:
                raise InvalidTransition(r)
            if not r["cancel_requested"]:
                r["cancel_requested"] = True
                r["cancel_requested_at"] = utc_now()

        try:
            return self.update(job_id, change) or record
        except InvalidTransition as error:
            if error.record["status"] == "cancelled":
                return error.record
            raise

    # listing
    def page(
        self, tenant: str, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the tenant's jobs, newest first, and the cursor of the next page (or None)."""
        key = self._key("tenant", tenant, "jobs")
        after = decode_cursor(cursor) if cursor else None
        max_score: Any = "+inf" if after is None else after[0]
        found: list[dict[str, Any]] = []
        offset, batch = 0, max(limit * 2, 50)
        more = False
        while True:
            rows = self.redis.zrevrangebyscore(key, max_score, "-inf", start=offset, num=batch, withscores=True)
            if not rows:
                break
            offset += len(rows)
            ids = [member.decode() for member, _ in rows]
            raws = self.redis.mget([self.job_key(i) for i in ids])
            for (member, score), job_id, raw in zip(rows, ids, raws, strict=True):
                if after is not None and score == after[0] and job_id >= after[1]:
                    continue
                if raw is None:
                    self.redis.zrem(key, member)
                    offset -= 1
                    continue
                record = json.loads(raw)
                if status is not None and record["status"] != status:
                    continue
                if len(found) == limit:
                    more = True
                    break
                record["_score"] = score
                found.append(record)
            if more or len(rows) < batch:
                break
        next_cursor = encode_cursor(found[-1]["_score"], found[-1]["id"]) if more and found else None
        for record in found:
            record.pop("_score", None)
        return found, next_cursor

    def active_count(self, tenant: str) -> int:
        return int(self.redis.scard(self._key("tenant", tenant, "active")))

    # operations
    def ping(self) -> bool:
        return bool(self.redis.ping())

    def stats(self) -> dict[str, Any]:
        """Queue depth, active and finished job counts, and time per phase, for /metrics."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(f"rq:queue:{self.settings.queue}")
        pipe.scard(self._key("status", "queued"))
        pipe.scard(self._key("status", "running"))
        pipe.hgetall(self._key("finished"))
        pipe.hgetall(self._key("phase_seconds"))
        depth, queued, running, finished, phases = pipe.execute()
        jobs = {"queued": int(queued), "running": int(running)}
        jobs |= {k.decode(): int(v) for k, v in finished.items()}
        phase_seconds: dict[str, dict[str, float]] = {}
        for name, value in phases.items():
            phase, kind = name.decode().rsplit(":", 1)
            phase_seconds.setdefault(phase, {"sum": 0.0, "count": 0.0})[kind] = float(value)
        return {"queue_depth": int(depth), "jobs": jobs, "phase_seconds": phase_seconds}

    def reap(self, now: float | None = None) -> list[tuple[str, str]]:
        """Settle running jobs whose worker is gone or that ignore a cancel request.

        A running job is lost when its heartbeat is older than
        ``heartbeat_timeout_s`` or its RQ job ended without our record ending. A
        lost job runs again while it has attempts left, else fails with code
        ``worker_lost``. A job asked to cancel that still runs after
        ``cancel_grace_s`` has its work stopped and turns ``cancelled``.
        A queued job whose queue entry is gone (the enqueue was cut short, or
        its work horse died before the job started) is enqueued again.
        Only one process reaps at a time (a short Redis lock). Returns (job id, action) pairs.
        """
        lock = self.redis.lock(self._key("reaper"), timeout=60, blocking=False)
        if not lock.acquire(blocking=False):
            return []
        try:
            return self._reap(time.time() if now is None else now)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass

    def _reap(self, now: float) -> list[tuple[str, str]]:
        actions: list[tuple[str, str]] = []
        running_key = self._key("status", "running")
        running = [member.decode() for member in self.redis.smembers(running_key)]
        for job_id, record, rq_state in self._indexed(running, (running_key,), "running"):
            beat = parse_time(record.get("heartbeat_at")) or parse_time(record.get("started_at")) or now
            ended = rq_state in FINISHED_STATUSES
            if record.get("cancel_requested"):
                asked = parse_time(record.get("cancel_requested_at")) or now
                if ended or now - asked > self.settings.cancel_grace_s or now - beat > self.settings.heartbeat_timeout_s:
                    self._stop_rq_job(record.get("rq_job_id"))
                    if self._finish(job_id, "cancelled", message="cancelled; the work was stopped"):
                        actions.append((job_id, "cancelled"))
                continue
            if not ended and now - beat <= self.settings.heartbeat_timeout_s:
                continue
            reason = (
                "its worker process ended without finishing it"
                if ended
                else f"its worker sent no heartbeat for {now - beat:.0f} s"
            )
            actions.append((job_id, self._recover(record, reason)))

        queued_key, since_key = self._key("status", "queued"), self._key("queued_since")
        if self.redis.scard(queued_key) > self.redis.zcard(since_key):
            self._index_queued_since()
        # Only the jobs queued for longer than a heartbeat timeout (by creation time) are read.
        waited_long = self.redis.zrangebyscore(since_key, "-inf", f"({now - self.settings.heartbeat_timeout_s}")
        for job_id, record, rq_state in self._indexed(
            [member.decode() for member in waited_long], (queued_key, since_key), "queued"
        ):
            if rq_state in ACTIVE_STATUSES:
                continue
            if rq_state is None:
                self.enqueue(job_id)
                log.warning("job %s was queued without a queue entry; enqueued again", job_id)
                actions.append((job_id, "enqueued"))
                continue
            try:
                record = self.update(job_id, _count_lost_start) or record
            except InvalidTransition:
                continue
            actions.append((job_id, self._recover(record, "its worker process ended before the job started")))
        return actions

    def _indexed(
        self, members: list[str], index_keys: tuple[str, ...], status: str, batch: int = 500
    ) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """(job id, record, public status of its RQ job) for the job ids ``members`` whose record
        has ``status``; ids without a record leave the indexes ``index_keys`` (sets or sorted sets).

        Records and RQ jobs are read ``batch`` at a time (one MGET, one RQ fetch_many), so a
        reap costs a few round trips however many jobs it reads.
        """
        for start in range(0, len(members), batch):
            ids = members[start : start + batch]
            raws = self.redis.mget([self.job_key(job_id) for job_id in ids])
            gone = [job_id for job_id, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:
                self._forget(index_keys, gone)
            chosen = []
            for job_id, raw in zip(ids, raws, strict=True):
                if raw is None:
                    continue
                record = pydantic_core.from_json(raw)  # json.loads's result, in under half the time
                if record["status"] == status:
                    chosen.append((job_id, record))
            if not chosen:
                continue
            states = self._rq_public_statuses([record.get("rq_job_id") for _, record in chosen])
            for (job_id, record), rq_state in zip(chosen, states, strict=True):
                yield job_id, record, rq_state

    def _forget(self, index_keys: tuple[str, ...], job_ids: list[str]) -> None:
        """Take ``job_ids`` (whose records are gone) out of the sets and sorted sets ``index_keys``."""
        pipe = self.redis.pipeline(transaction=False)
        for key in index_keys:
            if key == self._key("queued_since"):
                pipe.zrem(key, *job_ids)
            else:
                pipe.srem(key, *job_ids)
        pipe.execute()

    def _index_queued_since(self, batch: int = 500) -> None:
        """Add to ``queued_since`` the queued jobs it lacks (recorded before it existed, or by an
        older version during an upgrade), by their creation time; ids without a record leave
        ``status:queued``. Runs while ``status:queued`` has more ids than ``queued_since``."""
        queued_key, since_key = self._key("status", "queued"), self._key("queued_since")
        indexed = {member.decode() for member in self.redis.zrange(since_key, 0, -1)}
        missing = [member.decode() for member in self.redis.smembers(queued_key) if member.decode() not in indexed]
        for start in range(0, len(missing), batch):
            ids = missing[start : start + batch]
            raws = self.redis.mget([self.job_key(job_id) for job_id in ids])
            gone = [job_id for job_id, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:
                self.redis.srem(queued_key, *gone)
            since = {}
            for job_id, raw in zip(ids, raws, strict=True):
                record = json.loads(raw) if raw is not None else None
                if record is not None and record["status"] == "queued":
                    since[job_id] = parse_time(record.get("created_at")) or time.time()
            if since:
                self.redis.zadd(since_key, since)

    def _recover(self, record: dict[str, Any], reason: str) -> str:
        job_id = record["id"]
        self._stop_rq_job(record.get("rq_job_id"))
        if record["attempts"] < self.settings.max_attempts:
            try:
                self.transition(
                    job_id,
                    "queued",
                    progress={"phase": "queued", "fraction": 0.0, "message": f"running again: {reason}"},
                    heartbeat_at=None,
                )
            except InvalidTransition:
                return "finished"
            self.enqueue(job_id)
            log.warning("job %s re-enqueued: %s", job_id, reason)
            return "requeued"
        message = (
            f"the job was lost after {record['attempts']} attempt(s): {reason} "
            "(killed, out of memory, or the machine went away)"
        )
        self._finish(job_id, "failed", code="worker_lost", message=message)
        log.warning("job %s failed: %s", job_id, message)
        return "failed"

    def _finish(self, job_id: str, status: str, *, message: str, code: str | None = None) -> bool:
        fields: dict[str, Any] = {}
        if code is not None:
            fields["error"] = {"code": code, "message": message}
        record = self.get(job_id)
        if record is not None:
            fields["progress"] = record["progress"] | {"message": message}
        try:
            return self.transition(job_id, status, **fields) is not None
        except InvalidTransition:
            return False

    def _rq_public_statuses(self, rq_job_ids: list[str | None]) -> list[str | None]:
        """The public status of each RQ job (None where there is no id or no such RQ job).

        Only the status field of each RQ hash is read (as RQ reads it), all in one script call:
        RQ's ``Job.fetch_many`` rebuilt every job, payload included, and a pipeline of HGETs
        spends most of its time in the client, which made a reap of a long queue costly.
        """
        keys = [RQ_JOB_PREFIX + rq_job_id for rq_job_id in rq_job_ids if rq_job_id]
        statuses = iter(self._run_script(_RQ_STATUSES_SCRIPT, keys, []) if keys else [])
        return [public_status(_text(next(statuses))) if rq_job_id else None for rq_job_id in rq_job_ids]

    def _stop_rq_job(self, rq_job_id: str | None) -> None:
        if not rq_job_id:
            return
        from rq.command import send_stop_job_command

        try:
            send_stop_job_command(self.redis, rq_job_id, serializer=JSONSerializer)
        except Exception:  # noqa: BLE001 - the job is not running anywhere; nothing to stop
            pass


class Script:
    """A Lua script run by its SHA-1 (EVALSHA), sent whole (EVAL) only when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# Creates a job atomically (the source of ``JobStore.creation_script``, which writes RQ's job
# hash in for RQ_JOB_HASH). KEYS: the record, the tenant's job index, the tenant's active set,
# the queued index, RQ's set of queues, RQ's job hash, RQ's queue, ``queued_since`` and, when
# the request has an Idempotency-Key, its claim. ARGV: the active-job limit ("" for none), the
# claim and its TTL, the record, the TTL of the record, the index and RQ's job, the creation
# time and the index's cutoff (scores), the job id, the RQ job id, the queue's key, then the
# time, payload and description of RQ's job. Returns 0 (created), 1 (the claim exists: replay
# its job) or 2 (too many active jobs; nothing written).
CREATE_SCRIPT = """
local claimed = #KEYS == 9
if claimed and not redis.call("SET", KEYS[9], ARGV[2], "NX", "EX", ARGV[3]) then
  return 1
end
if ARGV[1] ~= "" and redis.call("SCARD", KEYS[3]) >= tonumber(ARGV[1]) then
  if claimed then redis.call("DEL", KEYS[9]) end
  return 2
end
local ttl = ARGV[5]
redis.call("SET", KEYS[1], ARGV[4], "EX", ttl)
redis.call("ZADD", KEYS[2], ARGV[6], ARGV[8])
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[7])
redis.call("EXPIRE", KEYS[2], ttl)
redis.call("SADD", KEYS[3], ARGV[8])
redis.call("SADD", KEYS[4], ARGV[8])
redis.call("ZADD", KEYS[8], ARGV[6], ARGV[8])
redis.call("SADD", KEYS[5], ARGV[10])
redis.call("HSET", KEYS[6], RQ_JOB_HASH)
redis.call("EXPIRE", KEYS[6], ttl)
redis.call("RPUSH", KEYS[7], ARGV[9])
return 0
"""
_OUTCOMES = {0: "create", 1: "replay", 2: "too_many"}
# The status field of each RQ job hash in KEYS (nil where there is none).
_RQ_STATUSES_SCRIPT = Script(
    """
local statuses = {}
for i, key in ipairs(KEYS) do statuses[i] = redis.call("HGET", key, "status") end
return statuses
"""
)


def zlib_stored(data: bytes) -> bytes:
    """A zlib stream (RFC 1950) of ``data`` in one stored, uncompressed deflate block: what
    ``zlib.compress(data, 0)`` gives, without setting up a compressor (which costs more than
    the rest of a short payload's encoding). Beyond 32 KiB (RQ payloads here are a hundred
    bytes), zlib itself writes it, as zlib splits long data into several blocks."""
    size = len(data)
    if size > 0x8000:
        return zlib.compress(data, 0)
    header = b"\x78\x01\x01" + size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little")
    return header + data + zlib.adler32(data).to_bytes(4, "big")


def _lua_string(value: Any) -> str:
    """A Lua string literal of ``value``'s text: letters, digits and a few safe characters as
    they are, every other byte as a decimal escape."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:/"
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in str(value).encode()) + '"'


class Creation:
    """How a new job is created: one call of ``JobStore.creation_script`` (``keys``, ``args``), so that a
    synchronous client (``JobStore.create``) and an asynchronous one (the API) run the same steps,
    in one round trip and atomically: claim the idempotency key, count the tenant's active jobs,
    then write the record, its indexes and RQ's job (a worker never sees a queued job without its
    record, nor a record without its queue entry). ``outcome(reply)`` reads the answer:
    "create" (done), "replay" (the key's job exists: return it) or "too_many" (refuse).
    """

    def __init__(
        self,
        store: JobStore,
        tenant: str,
        request: dict[str, Any],
        job_id: str,
        idempotency_key: str | None,
        body_hash: str | None,
        max_active: int | None,
    ) -> None:
        rq_job_id = f"{job_id}-1"
        now, created_at, rq_stamp = creation_times()
        self.record: dict[str, Any] = {
            "id": job_id,
            "tenant": tenant,
            "status": "queued",
            "created_at": created_at,
            "started_at": None,
            "finished_at": None,
            "progress": {"phase": "queued", "fraction": 0.0, "message": "waiting for a worker"},
            "request": request,
            "result": None,
            "error": None,
            "attempts": 0,
            "heartbeat_at": None,
            "cancel_requested": False,
            "rq_job_id": rq_job_id,
            "idempotency_key": idempotency_key,
            "body_hash": body_hash,
        }
        settings = store.settings
        queued_key, queued_since_key, queue_key = store._fixed_keys
        tenant_key = f"{store.prefix}tenant:{tenant}:"
        self.keys = [
            store.job_key(job_id),
            tenant_key + "jobs",
            tenant_key + "active",
            queued_key,
            RQ_QUEUES_KEY,
            RQ_JOB_PREFIX + rq_job_id,
            queue_key,
            queued_since_key,
        ]
        self.claim_key: str | None = None
        claim = ""
        if idempotency_key is not None:
            self.claim_key = store._key("idempotency", tenant, idempotency_key)
            self.keys.append(self.claim_key)
            claim = json.dumps({"job_id": job_id, "body_hash": body_hash})
        ttl = settings.job_ttl_s
        self.args: list[Any] = [
            "" if max_active is None else max_active,
            claim,
            IDEMPOTENCY_TTL_S,
            pydantic_core.to_json(self.record),  # json.dumps's JSON, several times faster
            ttl,
            now,
            now - ttl,
            job_id,
            rq_job_id,
            queue_key,
            *store.rq_job_values(job_id, rq_stamp),
        ]

    def outcome(self, reply: Any) -> str:
        """What the script's reply says: "create", "replay" or "too_many"."""
        return _OUTCOMES[int(reply)]


class LeaveUnchanged(Exception):
    """Raised by an update's change function to write nothing."""


def _check_owner(record: dict[str, Any], attempt: int | None) -> None:
    if attempt is not None and (record["status"] != "running" or record["attempts"] != attempt):
        raise LeaveUnchanged()


def _count_lost_start(record: dict[str, Any]) -> None:
    if record["status"] != "queued":
        raise InvalidTransition(record)
    record["attempts"] += 1


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def new_job_id() -> str:
    """32 random hex digits (128 random bits, a uuid4 has 122), in a quarter of uuid4().hex's time."""
    return os.urandom(16).hex()


class TooManyActiveJobs(Exception):
    """The tenant already has as many queued and running jobs as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the tenant already has {limit} queued or running jobs")
        self.limit = limit


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body."""

    def __init__(self, message: str = "this Idempotency-Key was used with a different request body") -> None:
        super().__init__(message)
        self.message = message


def encode_cursor(score: float, job_id: str) -> str:
    raw = json.dumps([score, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ValueError for a cursor this service did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, job_id = json.loads(raw)
        if not isinstance(job_id, str) or not isinstance(score, (int, float)):
            raise TypeError
        return float(score), job_id
    except (ValueError, TypeError) as error:
        raise ValueError("cursor: not a cursor from a previous page") from error
