"""The API's jobs: submission rules, the caller's jobs, cancel and results, as public models.
Reads and creation use ``redis.asyncio``; RQ and record transactions run in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio
from pydantic import ValidationError

from service.errors import (
    ApiError,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unprocessable,
    validation_error,
)
from service.schemas import Job, JobPage
from service.security import check_dataset_uri, check_output_apart, check_output_uri
from service.settings import ApiSettings
from worker import enqueue
from worker.enqueue import (
    IdempotencyConflict,
    OutputClaimed,
    TooManyActiveJobs,
    create_job,
    new_record,
)
from worker.keys import Keys
from worker.outputs import REPORT_HTML, Manifest
from worker.pagination import page
from worker.records import (
    InvalidTransition,
    JobRecord,
    JobResult,
    JobStatus,
    RecordStore,
    connect,
)
from worker.spec import JobRequest
from worker.storage import join_uri, read_bytes

log = logging.getLogger(__name__)


# Request fields added after the first version, with their defaults: hashed only when set
# otherwise, so that a body resent with its Idempotency-Key across an upgrade still matches.
_LATER_FIELDS: dict[str, Any] = {"numeric_detection": True, "column_names": None}


def body_hash(request: dict[str, Any]) -> str:
    """SHA-256 of a request's canonical JSON (sorted keys): the same for the same body."""
    hashed = {
        key: value
        for key, value in request.items()
        if key not in _LATER_FIELDS or value != _LATER_FIELDS[key]
    }
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Jobs:
    """Job records and the queue, as the API's routes use them. ``redis`` (asyncio) exists
    once ``open()`` ran on the event loop that serves the app (the app's lifespan)."""

    redis: redis.asyncio.Redis
    create_script: Any
    enqueuer: ThreadPoolExecutor  # one thread puts new jobs on RQ's queue, in their order

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        connection = connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
        self.store = RecordStore(connection, settings)
        self.queue = enqueue.queue_of(connection, settings)
        self._enqueues: set[asyncio.Future[None]] = set()

    async def open(self) -> None:
        # A request waits for a free connection (up to the connect timeout) rather than fail
        # when every connection of the pool is in use.
        timeout_s = self.settings.redis_timeout_s
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=64, timeout=timeout_s,
            socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 10.0),
            health_check_interval=30,
        )
        self.redis = redis.asyncio.Redis.from_pool(pool)
        self.create_script = enqueue.register_scripts(self.redis)
        self.enqueuer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nacs-enqueue")

    async def close(self) -> None:
        await asyncio.gather(*self._enqueues, return_exceptions=True)
        self.enqueuer.shutdown()
        await self.redis.aclose()
        self.store.redis.close()

    async def submit(
        self, tenant: str, request: JobRequest, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        """Check the request's URIs, then record and enqueue it. Returns (job, created):
        an Idempotency-Key already used with the same body returns its job, not created."""
        settings = self.settings
        problem = request.submit_problem()
        if problem:
            field, message = problem
            raise Unprocessable(
                message, details=[{"field": field, "message": message, "type": "value_error"}]
            )
        job_id = enqueue.new_job_id()
        dataset_uri = await check_dataset_uri(request.dataset_uri, tenant, settings)
        output_uri = check_output_uri(request.output_uri, tenant, job_id, settings)
        check_output_apart(output_uri, dataset_uri)
        dumped = request.model_dump(mode="json")
        key_digest = request_hash = None
        if idempotency_key is not None:
            key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
            request_hash = body_hash(dumped)
        accepted = dumped | {"dataset_uri": dataset_uri, "output_uri": output_uri}
        try:  # what is stored must read back as a request: resolving may have changed it
            JobRequest.model_validate(accepted)
        except ValidationError as error:
            raise validation_error(error.errors()) from None
        record = new_record(tenant, accepted, job_id, key_digest, request_hash)
        limit = settings.max_active_jobs_per_tenant
        try:
            record, created = await create_job(
                self.create_script, self.redis, settings, record, max_active=limit
            )
        except IdempotencyConflict as error:
            raise Conflict(str(error), code="idempotency_conflict") from None
        except OutputClaimed as error:
            raise Conflict(str(error), code="output_uri_claimed") from None
        except TooManyActiveJobs as error:
            message = f"{error}; wait for some to finish (NACS_MAX_ACTIVE_JOBS_PER_TENANT={limit})"
            retry = {"Retry-After": "10"}
            raise TooManyRequests(message, code="too_many_active_jobs", headers=retry) from None
        if created:  # the reply does not wait for RQ; the reaper enqueues what this misses
            queued = asyncio.get_running_loop().run_in_executor(
                self.enqueuer, enqueue.enqueue, self.queue, record, settings
            )
            self._enqueues.add(queued)
            queued.add_done_callback(self._enqueued)
        return Job.of(record), created

    def _enqueued(self, queued: asyncio.Future[None]) -> None:
        self._enqueues.discard(queued)
        if not queued.cancelled() and queued.exception() is not None:
            log.warning("enqueue failed, left to the reaper: %s", queued.exception())

    async def owned(self, job_id: str, tenant: str) -> JobRecord:
        """The tenant's job record; another tenant's job is a 404, as is one that never
        existed."""
        raw = await self.redis.get(self.keys.job(job_id)) if job_id.isalnum() else None
        record = JobRecord.model_validate_json(raw) if raw else None
        if record is None or record.tenant != tenant:
            raise NotFound(f"no job {job_id}", code="job_not_found")
        return record

    async def page(
        self, tenant: str, status: JobStatus | None, limit: int, cursor: str | None
    ) -> JobPage:
        try:
            records, next_cursor = await page(
                self.redis, self.keys, tenant, status=status, limit=limit, cursor=cursor
            )
        except ValueError as error:
            raise Unprocessable(str(error)) from None
        return JobPage(jobs=[Job.of(record) for record in records], next_cursor=next_cursor)

    async def cancel(self, record: JobRecord) -> Job:
        try:
            cancelled = await asyncio.to_thread(enqueue.cancel, self.store, self.queue, record.id)
        except InvalidTransition as error:
            raise Conflict(
                f"job {record.id} already {error.record.status.value}; "
                "only queued or running jobs can be cancelled",
                code="job_finished",
            ) from None
        except KeyError:
            raise NotFound(f"no job {record.id}", code="job_not_found") from None
        return Job.of(cancelled)

    async def manifest(self, record: JobRecord) -> Manifest:
        """The manifest of a succeeded job, read from storage."""
        result = _succeeded(record, "a result exists only once it succeeded")
        uri = result.manifest_uri
        raw = await self._read(uri, f"the manifest {uri} is no longer in storage")
        try:
            return Manifest.model_validate_json(raw)
        except ValidationError:
            message = f"the manifest {uri} is not one this service can read"
            raise ApiError(message, code="result_unreadable") from None

    async def report(self, record: JobRecord) -> bytes:
        """report.html of a succeeded job, read from storage."""
        result = _succeeded(record, "a report is written only when a job succeeds")
        uri = join_uri(result.output_uri, REPORT_HTML)
        return await self._read(uri, f"job {record.id} has no report in storage ({uri})")

    async def _read(self, uri: str, missing: str) -> bytes:
        """The content of ``uri``; NotFound (``missing``) when it is gone, 503 when the store
        does not answer."""
        try:
            return await asyncio.to_thread(read_bytes, uri, self.settings)
        except FileNotFoundError:
            raise NotFound(missing, code="result_missing") from None
        except Exception as error:  # noqa: BLE001 - object-store clients raise their own errors
            message = f"the result store did not answer ({type(error).__name__})"
            retry = {"Retry-After": "5"}
            raise ServiceUnavailable(message, code="storage_unavailable", headers=retry) from None


def _succeeded(record: JobRecord, why: str) -> JobResult:
    """The result of a succeeded job; a Conflict that says where the job is, otherwise."""
    if record.status == JobStatus.succeeded and record.result is not None:
        return record.result
    where = f"job {record.id} is {record.status.value}"
    if record.error is not None:
        where += f" ({record.error.code}: {record.error.message})"
    raise Conflict(f"{where}; {why}", code="job_not_succeeded")
