"""The bodies the API returns (requests are ``worker.spec.JobRequest``; manifests are
``worker.outputs.Manifest``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.records import JobError, JobRecord, JobResult, JobStatus, Progress
from worker.spec import JobRequest


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
        return cls.model_validate(record, from_attributes=True)


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
