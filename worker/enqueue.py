"""Creating a job and putting it on RQ's queue, and taking it off again (cancel).

A new job is made in two steps. First one Lua script, atomically: claim the
Idempotency-Key, count the tenant's active jobs against its limit, write the
record and its indexes. Then ``Queue.enqueue_call`` (RQ's public API, JSON
serializer) puts the job id on the queue. A crash between the two leaves a
queued record without a queue entry; the reaper enqueues it
(``worker.reaper``). A worker never finds a queue entry without its record.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import redis.asyncio
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from worker import records
from worker.keys import Keys, enclosing_folders, output_folder
from worker.records import FINISHED, InvalidTransition, JobRecord, JobStatus, RecordStore
from worker.settings import SharedSettings

TASK = "worker.tasks.run_job"
IDEMPOTENCY_TTL_S = 24 * 3600

# KEYS: the record, the tenant's jobs, the tenant's active set, the queued index,
# ``queued_since``, the tenant's claimed output folders and when their claims end, and the
# Idempotency-Key's claim when there is one. ARGV: the active-job limit ("" for none), the
# claim, its TTL, the record, its TTL, the creation time, the cutoff of the tenant's job index,
# the job id, the output folder (``keys.output_folder``), the end of the range of the folders
# inside it, when its claim ends, then the folders that enclose it. Returns the existing claim
# (the key made a job before: replay it), 1 (too many active jobs), {2, folder} (the output
# folder is, lies in or holds one another job claimed) or 0 (created). Nothing is written
# unless it returns 0.
CREATE_SCRIPT = """
local claimed = #KEYS == 8
if claimed then
  local existing = redis.call("GET", KEYS[8])
  if existing then return existing end
end
if ARGV[1] ~= "" and redis.call("SCARD", KEYS[3]) >= tonumber(ARGV[1]) then
  return 1
end
local folder = ARGV[9] ~= ""
if folder then
  local ended = redis.call("ZRANGEBYSCORE", KEYS[7], "-inf", "(" .. ARGV[6], "LIMIT", 0, 500)
  if #ended > 0 then
    redis.call("ZREM", KEYS[6], unpack(ended))
    redis.call("ZREM", KEYS[7], unpack(ended))
  end
  for i = 12, #ARGV do
    if redis.call("ZSCORE", KEYS[6], ARGV[i]) then return {2, ARGV[i]} end
  end
  local inside = redis.call("ZRANGEBYLEX", KEYS[6], "[" .. ARGV[9], "(" .. ARGV[10], "LIMIT", 0, 1)
  if #inside > 0 then return {2, inside[1]} end
end
if claimed then redis.call("SET", KEYS[8], ARGV[2], "EX", ARGV[3]) end
redis.call("SET", KEYS[1], ARGV[4], "EX", ARGV[5])
redis.call("ZADD", KEYS[2], ARGV[6], ARGV[8])
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[7])
redis.call("EXPIRE", KEYS[2], ARGV[5])
redis.call("SADD", KEYS[3], ARGV[8])
redis.call("SADD", KEYS[4], ARGV[8])
redis.call("ZADD", KEYS[5], ARGV[6], ARGV[8])
if folder then
  redis.call("ZADD", KEYS[6], 0, ARGV[9])
  redis.call("ZADD", KEYS[7], ARGV[11], ARGV[9])
  redis.call("EXPIRE", KEYS[6], ARGV[5])
  redis.call("EXPIRE", KEYS[7], ARGV[5])
end
return 0
"""


def register_scripts(client: redis.asyncio.Redis) -> Any:
    """The creation script on ``client`` (redis-py runs it by EVALSHA, by EVAL if need be)."""
    return client.register_script(CREATE_SCRIPT)


class TooManyActiveJobs(Exception):
    """The tenant already has as many queued and running jobs as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the tenant already has {limit} queued or running jobs")
        self.limit = limit


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body, or its job is gone."""


class OutputClaimed(Exception):
    """The job's output folder is, lies inside or holds the output folder of another job."""

    def __init__(self, output_uri: str, other: str) -> None:
        other = other.rstrip("/")
        where = "is" if other == output_uri.rstrip("/") else "overlaps"
        super().__init__(
            f"output_uri: {output_uri} {where} the output folder of another job ({other}); "
            "a job writes only in a folder of its own: choose another, or leave output_uri out"
        )
        self.output_uri = output_uri


def new_job_id() -> str:
    """32 random hex digits (128 random bits)."""
    return os.urandom(16).hex()


def queue_of(connection: redis.Redis, settings: SharedSettings) -> Queue:
    return Queue(settings.queue, connection=connection, serializer=JSONSerializer)


def new_record(
    tenant: str, request: dict[str, Any], job_id: str,
    idempotency_key: str | None = None, body_hash: str | None = None,
) -> JobRecord:
    waiting = records.Progress(phase="queued", fraction=0.0, message="waiting for a worker")
    return JobRecord(
        id=job_id, tenant=tenant, status=JobStatus.queued, created_at=records.utc_now(),
        progress=waiting, request=request, rq_job_id=f"{job_id}-1",
        idempotency_key=idempotency_key, body_hash=body_hash,
    )


async def create_job(
    script: Any, client: redis.asyncio.Redis, settings: SharedSettings, record: JobRecord,
    *, max_active: int | None = None,
) -> tuple[JobRecord, bool]:
    """Record ``record`` (the caller then puts it on the queue: ``enqueue``); returns
    (record, True). With an Idempotency-Key that made a job before, returns (that job,
    False). ``script`` is ``register_scripts(client)``.

    The job claims its output folder (``request["output_uri"]``) in the same step: no other
    job's folder may be, lie inside or hold it while that claim lasts (``job_ttl_s`` after the
    job's last change of status; a job that fails or is cancelled gives its folder back).

    Raises IdempotencyConflict when the key came with another body, or its job is gone;
    TooManyActiveJobs when the tenant already has ``max_active`` queued or running jobs;
    OutputClaimed when another job claimed the output folder or one overlapping it.
    """
    keys = Keys(settings.redis_prefix)
    tenant = record.tenant
    names = [keys.job(record.id), keys.tenant_jobs(tenant), keys.tenant_active(tenant)]
    names += [keys.status("queued"), keys.queued_since]
    names += [keys.tenant_outputs(tenant), keys.tenant_output_ends(tenant)]
    claim = ""
    if record.idempotency_key is not None:
        names.append(keys.idempotency(record.tenant, record.idempotency_key))
        claim = json.dumps({"job_id": record.id, "body_hash": record.body_hash})
    now = records.parse_time(record.created_at) or time.time()
    limit, ttl = "" if max_active is None else max_active, settings.job_ttl_s
    args = [limit, claim, IDEMPOTENCY_TTL_S, record.model_dump_json(), ttl, now, now - ttl]
    output_uri = record.request.get("output_uri")
    if output_uri:
        folder = output_folder(output_uri)
        # Members from folder to folder[:-1] + "0" ("/" + 1) are the folders inside it.
        args += [record.id, folder, folder[:-1] + "0", now + ttl, *enclosing_folders(folder)]
    else:
        args += [record.id, "", "", ""]
    reply = await script(keys=names, args=args, client=client)
    if reply == 1 and await _forget_ended(client, keys, tenant):
        reply = await script(keys=names, args=args, client=client)
    if isinstance(reply, bytes):
        claim = json.loads(reply)
        if claim["body_hash"] != record.body_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
        raw = await client.get(keys.job(claim["job_id"]))
        if raw is None:
            raise IdempotencyConflict("the job this Idempotency-Key made has expired")
        return JobRecord.model_validate_json(raw), False
    if isinstance(reply, list):
        raise OutputClaimed(record.request["output_uri"], records.text(reply[1]))
    if reply == 1:
        raise TooManyActiveJobs(max_active or 0)
    return record, True


async def _forget_ended(client: redis.asyncio.Redis, keys: Keys, tenant: str) -> bool:
    """Remove from the tenant's active jobs those whose record is gone (expired or lost) or
    ended; returns whether any were. A job's end removes it (``RecordStore``), but a record
    that expires while queued or running leaves its id behind, where it would count against
    the limit for good."""
    members = await client.smembers(keys.tenant_active(tenant))
    active = sorted(records.text(member) for member in members)
    if not active:
        return False
    stored = await client.mget([keys.job(job_id) for job_id in active])
    ended = [job_id for job_id, raw in zip(active, stored, strict=True) if not _active(raw)]
    if ended:
        await client.srem(keys.tenant_active(tenant), *ended)
    return bool(ended)


def _active(raw: bytes | str | None) -> bool:
    """Whether a stored record is there and queued or running (one that cannot be read
    counts as active: it is not ours to drop)."""
    if raw is None:
        return False
    try:
        status = json.loads(raw).get("status")
    except (ValueError, AttributeError):
        return True
    return status in (records.JobStatus.queued.value, records.JobStatus.running.value)


def enqueue(queue: Queue, record: JobRecord, settings: SharedSettings) -> None:
    """Put a run of the job (RQ job ``record.rq_job_id``) on the queue, in one round trip."""
    ttl = settings.job_ttl_s
    with queue.connection.pipeline() as pipe:
        queue.enqueue_call(
            TASK, args=(record.id, settings.redis_prefix), job_id=record.rq_job_id,
            timeout=settings.job_timeout_s, result_ttl=ttl, failure_ttl=ttl, ttl=ttl,
            description=f"nacs job {record.id}", pipeline=pipe,
        )
        pipe.execute()


def enqueue_again(store: RecordStore, queue: Queue, job_id: str) -> JobRecord | None:
    """Enqueue a queued job under a new RQ job id (a fresh RQ job per attempt)."""

    def change(record: JobRecord) -> None:
        record.rq_job_id = f"{job_id}-{record.attempts + 1}"

    record = store.update(job_id, change)
    if record is not None:
        enqueue(queue, record, store.settings)
    return record


def cancel(store: RecordStore, queue: Queue, job_id: str) -> JobRecord:
    """Cancel a queued job at once; ask a running one to stop (it stops at its next progress
    call, or the reaper stops it). Raises KeyError for no record, InvalidTransition for a job
    that ended otherwise."""
    record = store.get(job_id)
    if record is None:
        raise KeyError(job_id)
    if record.status == JobStatus.queued:
        message = "cancelled before it started"
        try:
            progress = record.progress.model_copy(update={"message": message})
            cancelled = store.transition_from(
                job_id, JobStatus.queued, JobStatus.cancelled, cancel_requested=True,
                progress=progress,
            )
        except InvalidTransition as error:
            if error.record.status != JobStatus.running:
                return _already(error)
            # it started meanwhile: it is asked to stop below, as any running job
        else:
            if record.rq_job_id:
                stop_rq_job(queue.connection, record.rq_job_id)
            return cancelled or record

    def change(current: JobRecord) -> None:
        if current.status in FINISHED:
            raise InvalidTransition(current)
        if not current.cancel_requested:
            current.cancel_requested = True
            current.cancel_requested_at = records.utc_now()

    try:
        return store.update(job_id, change) or record
    except InvalidTransition as error:
        return _already(error)


def _already(error: InvalidTransition) -> JobRecord:
    if error.record.status == JobStatus.cancelled:
        return error.record
    raise error


def stop_rq_job(connection: redis.Redis, rq_job_id: str) -> None:
    """Stop an RQ job: its work horse if one runs it, else take it off the queue."""
    try:
        job = Job.fetch(rq_job_id, connection=connection, serializer=JSONSerializer)
        if job.worker_name:
            send_stop_job_command(connection, rq_job_id, serializer=JSONSerializer)
        elif not job.is_canceled:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass  # no such job, or it ended meanwhile: nothing left to stop
