"""Jobs as the API shows them: submission rules and record -> public job."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import pydantic_core
from fastapi import Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.errors import Conflict, NotFound, TooManyRequests, Unprocessable, validation_error
from service.records import AsyncRecords
from service.schemas import Job
from service.security import check_dataset_uri, check_output_uri
from service.settings import Settings
from worker.queueing import (
    IdempotencyConflict,
    InvalidTransition,
    JobStore,
    TooManyActiveJobs,
    new_job_id,
)
from worker.spec import JobRequest

if TYPE_CHECKING:
    from starlette.datastructures import State

MAX_IDEMPOTENCY_KEY_LENGTH = 255


def to_public(record: dict[str, Any]) -> Job:
    """The public view of a job record (internal fields stay inside), as a model."""
    return Job.model_validate({k: record.get(k) for k in Job.model_fields if k in record}, strict=False)


def public_job(record: dict[str, Any]) -> dict[str, Any]:
    """The public view of a job record as plain JSON data: ``to_public(record).model_dump(mode="json")``
    without building the models. Records are written by this service from validated requests,
    so picking the public fields (with the model's defaults) is all the conversion there is."""
    progress = record["progress"]
    error = record.get("error")
    return {
        "id": record["id"],
        "status": record["status"],
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "progress": {
            "phase": progress["phase"],
            "fraction": float(progress["fraction"]),
            "message": progress.get("message", ""),
        },
        "request": record["request"],
        "result": record.get("result"),
        "error": None if error is None else {"code": error["code"], "message": error["message"]},
        "attempts": record.get("attempts", 0),
        "cancel_requested": record.get("cancel_requested", False),
    }


class JsonBody(Response):
    """A JSON response from data already in its public shape (encoded as FastAPI's JSONResponse does)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class FiniteJsonBody(JsonBody):
    """A ``JsonBody`` of data that cannot hold NaN or infinity (a job just made from a validated
    request), encoded by pydantic-core: equivalent JSON in a third of the time. ``JsonBody``
    stays for records a worker wrote, where a non-finite number must fail rather than go out."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def parse_job_request(body: bytes, content_type: str | None) -> JobRequest:
    """The ``JobRequest`` of a ``POST /jobs`` body, or the error FastAPI's body validation gives.

    As FastAPI reads a body: JSON when the Content-Type is absent, application/json or
    application/*+json; an empty body, or one of another type, is a 422 naming the request
    body; JSON that does not parse is a 400 (malformed_json); a field that does not validate
    is a 422 naming it (``service.errors.validation_error``). Parsing and validating in one
    step (pydantic-core's JSON parser) costs a fraction of FastAPI's route to the same model.
    """
    if not body:
        raise validation_error([{"loc": (), "type": "missing", "msg": "Field required"}])
    if content_type is not None and not _is_json(content_type):
        raise validation_error([{"loc": (), "type": "model_type", "msg": "Input should be an object"}])
    try:
        return JobRequest.model_validate_json(body)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False)) from None


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def body_hash(request: dict[str, Any]) -> str:
    """SHA-256 of a request's canonical JSON (sorted keys), the same for the same validated body."""
    return hashlib.sha256(_CANONICAL.encode(request).encode()).hexdigest()


async def submit(
    records: AsyncRecords,
    store: JobStore,
    settings: Settings,
    tenant: str,
    request: JobRequest,
    idempotency_key: str | None,
) -> tuple[dict[str, Any], bool]:
    """Check the request's URIs, then record and enqueue it. Returns (public job, created).

    One round trip on the event loop (``worker.queueing.Creation``): a script that claims the
    idempotency key, counts the tenant's active jobs and writes the record, its indexes and
    RQ's job, atomically.
    """
    if idempotency_key is not None:
        if not idempotency_key.strip() or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise Unprocessable(
                f"Idempotency-Key: must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters", code="invalid_request"
            )
    job_id = new_job_id()
    dataset_uri = check_dataset_uri(request.dataset_uri, tenant, settings)
    output_uri = check_output_uri(request.output_uri, tenant, job_id, settings)
    dumped = request.model_dump(mode="json")
    # The hash is compared only with the claim of an Idempotency-Key; without a key there is none.
    key_digest = request_hash = None
    if idempotency_key is not None:
        key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        request_hash = body_hash(dumped)
    plan = store.plan_creation(
        tenant,
        dumped | {"dataset_uri": dataset_uri, "output_uri": output_uri},
        job_id=job_id,
        idempotency_key=key_digest,
        body_hash=request_hash,
        max_active=settings.max_active_jobs_per_tenant,
    )
    outcome = plan.outcome(await records.script(store.creation_script, plan.keys, plan.args))
    if outcome == "replay":
        try:
            record = await run_in_threadpool(store.replay, plan.claim_key, request_hash)
        except IdempotencyConflict as error:
            raise Conflict(error.message, code="idempotency_conflict") from None
        return public_job(record), False
    if outcome == "too_many":
        limit = settings.max_active_jobs_per_tenant
        raise TooManyRequests(
            f"{TooManyActiveJobs(limit)}; wait for some to finish (NACS_MAX_ACTIVE_JOBS_PER_TENANT={limit})",
            code="too_many_active_jobs",
            headers={"Retry-After": "10"},
        )
    return public_job(plan.record), True


async def submission_response(
    state: State, body: bytes, authorization: str | None, content_type: str | None, idempotency_key: str | None
) -> Response:
    """The response to ``POST /jobs``: 202 and Location for a new job, 200 for a replayed one.

    Raises the ``ApiError`` of the first check that fails: the key (401), the body (400/422),
    the URIs and the Idempotency-Key (422), a replay with another body (409), the active-job
    limit (429). The route and ``service.hot_paths`` both answer through this function.
    """
    tenant = state.keyring.tenant(authorization)
    request = parse_job_request(body, content_type)
    job, created = await submit(state.records, state.store, state.settings, tenant, request, idempotency_key)
    response = FiniteJsonBody if created else JsonBody  # a replayed job is a record a worker may have changed
    return response(job, status_code=202 if created else 200, headers={"Location": f"/jobs/{job['id']}"})


async def find_owned(records: AsyncRecords, job_id: str, tenant: str) -> dict[str, Any]:
    """The tenant's job record; another tenant's job is a 404, as is one that never existed."""
    record = await records.get(job_id) if job_id.isalnum() else None
    if record is None or record["tenant"] != tenant:
        raise NotFound(f"no job {job_id}", code="job_not_found")
    return record


async def job_response(state: State, job_id: str, authorization: str | None) -> Response:
    """The response to ``GET /jobs/{job_id}`` (the route and ``service.hot_paths`` both answer through it)."""
    tenant = state.keyring.tenant(authorization)
    return JsonBody(public_job(await find_owned(state.records, job_id, tenant)))


def cancel(store: JobStore, record: dict[str, Any]) -> dict[str, Any]:
    """Cancel the job of ``record``; returns the public job."""
    try:
        return public_job(store.request_cancel(record["id"]))
    except InvalidTransition as error:
        raise Conflict(
            f"job {record['id']} already {error.record['status']}; only queued or running jobs can be cancelled",
            code="job_finished",
        ) from None
    except KeyError:
        raise NotFound(f"no job {record['id']}", code="job_not_found") from None
