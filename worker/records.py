"""Job records: the typed record each job keeps in Redis, and the store that changes it.

A record (``Keys.job``) outlives RQ's short-lived job hashes by days; RQ only
carries the job id. Every change goes through ``RecordStore.update``: an
optimistic transaction (WATCH) that also keeps the status indexes in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from worker.keys import Keys, output_folder
from worker.settings import SharedSettings


class JobStatus(str, Enum):
    """The public statuses of a job; RQ's own never reach the wire."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = frozenset({JobStatus.queued, JobStatus.running})
FINISHED = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
PHASES: tuple[str, ...] = ("loading", "selecting", "denoising", "auditing", "writing")
Phase = Literal["queued", "loading", "selecting", "denoising", "auditing", "writing", "done"]


class Progress(BaseModel):
    phase: Phase = Field(description="queued, loading, selecting, denoising, auditing or writing.")
    fraction: float = Field(ge=0.0, le=1.0, description="Share of the phase done, 0-1.")
    message: str = ""


class JobError(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. labels_not_binary.")
    message: str = Field(description="What went wrong and what to do about it.")


class JobResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    output_uri: str
    coreset_uri: str
    manifest_uri: str
    size: int = Field(description="Rows in the coreset.")
    clicks: int | None = Field(default=None, description="Clicks in the coreset.")
    data_rows: int | None = Field(default=None, description="Rows in the dataset as read.")
    data_clicks: int | None = Field(default=None, description="Clicks in the dataset.")
    phase_seconds: dict[str, float] = Field(default_factory=dict)


class JobRecord(BaseModel):
    """A job as Redis holds it: the public job, and what the service and workers keep to run
    it."""

    model_config = ConfigDict(extra="allow")

    id: str
    tenant: str
    status: JobStatus
    created_at: str = Field(description="RFC 3339, UTC.")
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress
    request: dict[str, Any] = Field(description="The accepted request, with defaults filled in.")
    result: JobResult | None = None
    error: JobError | None = None
    attempts: int = Field(default=0, description="Runs started so far.")
    cancel_requested: bool = False
    cancel_requested_at: str | None = None
    heartbeat_at: str | None = None
    rq_job_id: str | None = None
    shard_jobs: list[str] = Field(
        default_factory=list, description="RQ job ids of the run's shard jobs (worker.shards)."
    )
    deadline_at: str | None = Field(
        default=None,
        description="When the run of a job spread over workers must end: the job timeout "
        "after the run began (None for a job run as one, whose RQ job has that timeout).",
    )
    idempotency_key: str | None = None
    body_hash: str | None = None


CANCELLED_WHILE_RUNNING = "cancelled while running"


def cancelled_progress(record: JobRecord | None) -> Progress:
    """A run's progress once a cancel stopped it: the phase and fraction its record had
    reached (nothing reached when the record is gone)."""
    reached = record.progress if record is not None else Progress(phase="loading", fraction=0)
    return reached.model_copy(update={"message": CANCELLED_WHILE_RUNNING})


def text(value: Any) -> str:
    """A Redis reply as text (replies are bytes: RQ needs clients that do not decode them)."""
    return value.decode() if isinstance(value, bytes) else value


def utc_now() -> str:
    """The current time in RFC 3339 (UTC, milliseconds)."""
    return rfc3339(time.time())


def rfc3339(seconds: float) -> str:
    """A time in seconds since the epoch in RFC 3339 (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, or None."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def connect(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A Redis client (bytes responses, as RQ needs) with bounded timeouts."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 10.0),
        health_check_interval=30,
    )


def persistence_problem(connection: redis.Redis) -> str | None:
    """Why the Redis of ``connection`` would lose job records and the queue in a restart, or
    None when it keeps an append-only file (or does not say: CONFIG may be disabled)."""
    try:
        appendonly = text(connection.config_get("appendonly").get("appendonly", b""))
    except redis.exceptions.RedisError:
        return None
    if appendonly in ("yes", ""):
        return None
    return (
        "Redis keeps no append-only file (appendonly no): a restart loses job records and "
        "queued jobs; run it with appendonly yes (docs/DEPLOY.md)"
    )


class InvalidTransition(Exception):
    """The job is finished, or another run owns it: its status cannot change this way."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.id} is already {record.status.value}")
        self.record = record


class LeaveUnchanged(Exception):
    """Raised by an update's change function to write nothing."""


class RecordStore:
    """Reads and changes job records (synchronous: workers, the reaper, cancel)."""

    def __init__(self, connection: redis.Redis, settings: SharedSettings) -> None:
        self.redis = connection
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.get(self.keys.job(job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        raws = self.redis.mget([self.keys.job(job_id) for job_id in job_ids]) if job_ids else []
        return [JobRecord.model_validate_json(raw) if raw else None for raw in raws]

    def update(self, job_id: str, change: Callable[[JobRecord], Any]) -> JobRecord | None:
        """Apply ``change`` to the record atomically; None if the record is gone.

        ``change`` may raise LeaveUnchanged to write nothing (the record as read is returned).
        """
        key = self.keys.job(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    record = JobRecord.model_validate_json(raw)
                    before = record.status
                    try:
                        change(record)
                    except LeaveUnchanged:
                        return JobRecord.model_validate_json(raw)
                    pipe.multi()
                    pipe.set(key, record.model_dump_json(), ex=self.settings.job_ttl_s)
                    if record.status != before:
                        self._index_status(pipe, record)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def _index_status(self, pipe: Any, record: JobRecord) -> None:
        job_id, status = record.id, record.status
        for active in ACTIVE:
            if active != status:
                pipe.srem(self.keys.status(active.value), job_id)
        if status in ACTIVE:
            pipe.sadd(self.keys.status(status.value), job_id)
        if status == JobStatus.queued:
            since = parse_time(record.created_at) or time.time()
            pipe.zadd(self.keys.queued_since, {job_id: since})
        else:
            pipe.zrem(self.keys.queued_since, job_id)
        if status in FINISHED:
            pipe.srem(self.keys.tenant_active(record.tenant), job_id)
            pipe.hincrby(self.keys.finished, status.value, 1)
        self._keep_output_claim(pipe, record)

    def _keep_output_claim(self, pipe: Any, record: JobRecord) -> None:
        """A job's claim on its output folder lasts as long as its record; a job that failed or
        was cancelled has no result, and gives the folder back."""
        output_uri = record.request.get("output_uri")
        if not output_uri:
            return
        folder = output_folder(output_uri)
        folders = self.keys.tenant_outputs(record.tenant)
        ends = self.keys.tenant_output_ends(record.tenant)
        if record.status in (JobStatus.failed, JobStatus.cancelled):
            pipe.zrem(folders, folder)
            pipe.zrem(ends, folder)
            return
        ttl = self.settings.job_ttl_s
        pipe.zadd(ends, {folder: time.time() + ttl}, xx=True)
        pipe.expire(folders, ttl)
        pipe.expire(ends, ttl)

    def transition(self, job_id: str, status: JobStatus, **fields: Any) -> JobRecord | None:
        """Move an active job to ``status`` and set ``fields``; a finished job raises
        InvalidTransition."""
        return self._transition(job_id, None, status, fields)

    def transition_from(
        self, job_id: str, current: JobStatus, status: JobStatus, **fields: Any
    ) -> JobRecord | None:
        """As ``transition``, for a job whose status is still ``current`` (else
        InvalidTransition)."""
        return self._transition(job_id, current, status, fields)

    def _transition(
        self, job_id: str, current: JobStatus | None, status: JobStatus, fields: dict[str, Any]
    ) -> JobRecord | None:
        def change(record: JobRecord) -> None:
            if record.status in FINISHED or current not in (None, record.status):
                raise InvalidTransition(record)
            _set(record, status, fields)

        return self.update(job_id, change)

    def finish_run(
        self, job_id: str, attempt: int, status: JobStatus, **fields: Any
    ) -> JobRecord | None:
        """End the run ``attempt`` with ``status``; raises InvalidTransition when the job is
        finished or another run owns it (the reaper gave it to a new run)."""

        def change(record: JobRecord) -> None:
            if record.status != JobStatus.running or record.attempts != attempt:
                raise InvalidTransition(record)
            _set(record, status, fields)

        return self.update(job_id, change)

    def heartbeat(
        self, job_id: str, *, attempt: int | None = None, progress: Progress | None = None
    ) -> JobRecord | None:
        """Mark the run ``attempt`` alive, with its ``progress`` when given; nothing changes
        when another run owns the job now."""

        def change(record: JobRecord) -> None:
            if attempt is not None and (
                record.status != JobStatus.running or record.attempts != attempt
            ):
                raise LeaveUnchanged()
            record.progress = progress or record.progress
            record.heartbeat_at = utc_now()

        return self.update(job_id, change)

    def add_phase_seconds(self, phase_seconds: dict[str, float]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for phase, seconds in phase_seconds.items():
            pipe.hincrbyfloat(self.keys.phase_seconds, f"{phase}:sum", float(seconds))
            pipe.hincrby(self.keys.phase_seconds, f"{phase}:count", 1)
        pipe.execute()

    def stats(self) -> dict[str, Any]:
        """Active and finished job counts and time per phase, for /metrics."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(self.keys.status("queued"))
        pipe.scard(self.keys.status("running"))
        pipe.hgetall(self.keys.finished)
        pipe.hgetall(self.keys.phase_seconds)
        pipe.hgetall(self.keys.shard_jobs)
        queued, running, finished, phases, shards = pipe.execute()
        jobs = {"queued": int(queued), "running": int(running)}
        jobs |= {k.decode(): int(v) for k, v in finished.items()}
        phase_seconds: dict[str, dict[str, float]] = {}
        for name, value in phases.items():
            phase, kind = name.decode().rsplit(":", 1)
            phase_seconds.setdefault(phase, {"sum": 0.0, "count": 0.0})[kind] = float(value)
        shard_jobs = {text(name): int(value) for name, value in shards.items()}
        return {"jobs": jobs, "phase_seconds": phase_seconds, "shard_jobs": shard_jobs}

    def count_shard_job(self, kind: str, outcome: str) -> None:
        """Count one shard job of ``kind`` (encode, fold, reduce) that ended with ``outcome``."""
        self.redis.hincrby(self.keys.shard_jobs, f"{kind}:{outcome}", 1)


def _set(record: JobRecord, status: JobStatus, fields: dict[str, Any]) -> None:
    record.status = status
    if status in FINISHED:
        record.finished_at = utc_now()
    for name, value in fields.items():
        setattr(record, name, value)
