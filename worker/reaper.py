"""The reaper: settles jobs whose worker is gone, ignored cancels, and queued records that
never reached the queue. Workers and the API run it on a timer, one process at a time."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import redis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from worker.enqueue import enqueue_again, stop_rq_job
from worker.records import (
    InvalidTransition,
    JobError,
    JobRecord,
    JobStatus,
    Progress,
    RecordStore,
    parse_time,
    text,
)
from worker.shards import remove_scratch
from worker.tasks import TIMED_OUT

log = logging.getLogger(__name__)

BATCH = 500
# RQ job states in which the job has ended (in any other, it waits or runs).
_RQ_ENDED = {RqStatus.FINISHED, RqStatus.FAILED, RqStatus.STOPPED, RqStatus.CANCELED}
# States of a shard job whose work horse died or that was stopped, and of one still to run.
_RQ_BROKEN = {RqStatus.FAILED, RqStatus.STOPPED, RqStatus.CANCELED}
_RQ_WAITING = {RqStatus.QUEUED, RqStatus.DEFERRED, RqStatus.SCHEDULED}


def reap(store: RecordStore, queue: Queue, now: float | None = None) -> list[tuple[str, str]]:
    """Settle running jobs whose worker is gone, that ignore a cancel request or that run
    past their deadline, and queued jobs whose queue entry is gone. Returns (job id, action)
    pairs.

    A running job is lost when its heartbeat is older than ``heartbeat_timeout_s`` or its RQ
    job ended without our record ending (for a job spread over shard jobs: one of them failed
    or was stopped, or all ended; while none runs and some wait for a worker, no heartbeat is
    due): it runs again while it has attempts left, else it
    fails with code ``worker_lost``. A job asked to cancel that still runs after
    ``cancel_grace_s`` has its work stopped and turns ``cancelled``. A job queued for longer
    than ``heartbeat_timeout_s`` without an RQ job (its enqueue was cut short) is enqueued;
    one whose RQ job ended before the job started (its work horse died) counts an attempt.
    A job spread over workers still running ``heartbeat_timeout_s`` after its run's
    ``deadline_at`` (a shard job that started before the deadline runs on for up to the time
    left when it was queued) has its work stopped and fails with code ``timeout``.
    """
    lock = store.redis.lock(store.keys.reaper_lock, timeout=60, blocking=False)
    if not lock.acquire(blocking=False):
        return []
    try:
        return _reap(store, queue, time.time() if now is None else now)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # it expired meanwhile
            lock.release()


def _reap(store: RecordStore, queue: Queue, now: float) -> list[tuple[str, str]]:
    settings = store.settings
    actions: list[tuple[str, str]] = []
    running_key = store.keys.status("running")
    running = [text(member) for member in store.redis.smembers(running_key)]
    for record, rq_status in _with_rq_status(store, queue, running, JobStatus.running):
        beat = parse_time(record.heartbeat_at) or parse_time(record.started_at) or now
        ended, shards_waiting = rq_status in _RQ_ENDED, False
        if record.shard_jobs:
            ended, shards_waiting = _shards_state(queue, record)
        if record.cancel_requested:
            asked = parse_time(record.cancel_requested_at) or now
            late = now - asked > settings.cancel_grace_s
            if ended or late or now - beat > settings.heartbeat_timeout_s:
                _stop_work(store, record)
                if _finish(store, record, JobStatus.cancelled, "cancelled; the work was stopped"):
                    remove_scratch(settings, record.id)
                    actions.append((record.id, "cancelled"))
            continue
        deadline = parse_time(record.deadline_at)
        if deadline is not None and now - deadline > settings.heartbeat_timeout_s:
            _stop_work(store, record)
            if _finish(store, record, JobStatus.failed, TIMED_OUT, code="timeout"):
                remove_scratch(settings, record.id)
                actions.append((record.id, "timed out"))
            continue
        if shards_waiting or (not ended and now - beat <= settings.heartbeat_timeout_s):
            continue
        reason = f"its worker sent no heartbeat for {now - beat:.0f} s"
        reason = "its worker process ended without finishing it" if ended else reason
        actions.append((record.id, _recover(store, queue, record, reason)))

    queued_key, since_key = store.keys.status("queued"), store.keys.queued_since
    if store.redis.scard(queued_key) > store.redis.zcard(since_key):
        # Queued jobs missing from ``queued_since`` (recorded by an older version) count as old.
        indexed = {text(m) for m in store.redis.zrange(since_key, 0, -1)}
        missing = [text(m) for m in store.redis.smembers(queued_key) if text(m) not in indexed]
        if missing:
            store.redis.zadd(since_key, dict.fromkeys(missing, 0.0))
    cutoff = f"({now - settings.heartbeat_timeout_s}"
    old = [text(member) for member in store.redis.zrangebyscore(since_key, "-inf", cutoff)]
    if old:  # jobs whose RQ job ("{id}-{run}") is still on the queue wait: none is read
        waiting = {rq_job_id.rsplit("-", 1)[0] for rq_job_id in queue.get_job_ids()}
        old = [job_id for job_id in old if job_id not in waiting]
    for record, rq_status in _with_rq_status(store, queue, old, JobStatus.queued):
        if rq_status is not None and rq_status not in _RQ_ENDED:
            continue
        if rq_status is None:
            enqueue_again(store, queue, record.id)
            log.warning("job %s was queued without a queue entry; enqueued again", record.id)
            actions.append((record.id, "enqueued"))
            continue
        try:
            counted = store.update(record.id, _count_lost_start) or record
        except InvalidTransition:
            continue
        reason = "its worker process ended before the job started"
        actions.append((record.id, _recover(store, queue, counted, reason)))
    return actions


def _with_rq_status(
    store: RecordStore, queue: Queue, job_ids: list[str], status: JobStatus
) -> Iterator[tuple[JobRecord, RqStatus | None]]:
    """Each record of ``job_ids`` that has ``status``, with the status of its RQ job (None
    where there is none). Ids without a record leave the status indexes. Read ``BATCH`` at a
    time: one MGET and one ``Job.fetch_many`` per batch."""
    for start in range(0, len(job_ids), BATCH):
        ids = job_ids[start : start + BATCH]
        records = store.get_many(ids)
        gone = [job_id for job_id, record in zip(ids, records, strict=True) if record is None]
        if gone:
            pipe = store.redis.pipeline(transaction=False)
            pipe.srem(store.keys.status(status.value), *gone)
            pipe.zrem(store.keys.queued_since, *gone)
            pipe.execute()
        chosen = [r for r in records if r is not None and r.status == status]
        rq_ids = [record.rq_job_id or "" for record in chosen]
        jobs = Job.fetch_many(rq_ids, connection=queue.connection, serializer=JSONSerializer)
        for record, job in zip(chosen, jobs, strict=True):
            yield record, (job.get_status(refresh=False) if job is not None else None)


def _shards_state(queue: Queue, record: JobRecord) -> tuple[bool, bool]:
    """(ended, waiting) of a job spread over shard jobs (``worker.shards``): ended when one of
    them failed or was stopped (its work horse died) or all finished without ending the job;
    waiting when none runs and some wait on the queue or for the jobs they depend on (no
    heartbeat is due then)."""
    jobs = Job.fetch_many(record.shard_jobs, connection=queue.connection, serializer=JSONSerializer)
    statuses = [job.get_status(refresh=False) if job is not None else None for job in jobs]
    broken = any(status in _RQ_BROKEN for status in statuses)
    finished = all(status == RqStatus.FINISHED for status in statuses)
    running = any(status == RqStatus.STARTED for status in statuses)
    queued = any(status in _RQ_WAITING for status in statuses)
    return broken or finished, not broken and not running and queued


def _stop_work(store: RecordStore, record: JobRecord) -> None:
    """Stop the job's RQ job and every shard job of its run."""
    if record.rq_job_id:
        stop_rq_job(store.redis, record.rq_job_id)
    for rq_job_id in record.shard_jobs:
        stop_rq_job(store.redis, rq_job_id)


def _count_lost_start(record: JobRecord) -> None:
    if record.status != JobStatus.queued:
        raise InvalidTransition(record)
    record.attempts += 1


def _recover(store: RecordStore, queue: Queue, record: JobRecord, reason: str) -> str:
    _stop_work(store, record)
    if record.attempts < store.settings.max_attempts:
        progress = Progress(phase="queued", fraction=0.0, message=f"running again: {reason}")
        try:
            store.transition(
                record.id, JobStatus.queued, progress=progress, heartbeat_at=None, shard_jobs=[],
                deadline_at=None,
            )
        except InvalidTransition:
            return "finished"
        enqueue_again(store, queue, record.id)
        log.warning("job %s re-enqueued: %s", record.id, reason)
        return "requeued"
    message = (
        f"the job was lost after {record.attempts} attempt(s): {reason} "
        "(killed, out of memory, or the machine went away)"
    )
    _finish(store, record, JobStatus.failed, message, code="worker_lost")
    remove_scratch(store.settings, record.id)
    log.warning("job %s failed: %s", record.id, message)
    return "failed"


def _finish(
    store: RecordStore, record: JobRecord, status: JobStatus, message: str, code: str = ""
) -> bool:
    progress = record.progress.model_copy(update={"message": message})
    fields: dict[str, object] = {"progress": progress}
    fields |= {"error": JobError(code=code, message=message)} if code else {}
    try:
        return store.transition(record.id, status, **fields) is not None
    except InvalidTransition:
        return False
