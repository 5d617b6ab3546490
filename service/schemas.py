"""The bodies the API returns (requests are ``worker.spec.JobRequest``; manifests are
``worker.outputs.Manifest``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from worker.records import JobError, JobRecord, JobResult, JobStatus, Progress
from worker.spec import JobOptions, JobRequest


class Job(BaseModel):
    """A job as the API shows it: the public part of its record."""

    id: str
    status: JobStatus
    created_at: str = Field(description="RFC 3339.")
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress
    request: JobRequest = Field(description="The accepted request, with defaults filled in.")
    result: JobResult | None = None
    error: JobError | None = None
    attempts: int = Field(default=0, description="Runs started so far (a lost job may run again).")
    cancel_requested: bool = False

    @classmethod
    def of(cls, record: JobRecord) -> Job:
        """The job of ``record``. A request stored by an earlier version that this one would
        refuse is shown as stored: one old record must not make the job list fail."""
        try:
            return cls.model_validate(record, from_attributes=True)
        except ValidationError:
            stored = dict(record.request)
            stored["options"] = JobOptions.model_construct(**dict(stored.get("options") or {}))
            fields = {name: getattr(record, name) for name in cls.model_fields if name != "request"}
            return cls.model_validate(fields | {"request": JobRequest.model_construct(**stored)})


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(
        default=None, description="Pass as cursor for the next page; null on the last."
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
