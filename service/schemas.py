"""The bodies the API returns (requests are ``worker.spec.JobRequest``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.spec import JobRequest, JobStatus, Phase


class Progress(BaseModel):
    phase: Phase = Field(description="queued, loading, selecting, denoising or writing.")
    fraction: float = Field(ge=0.0, le=1.0, description="Share of the phase done, 0-1.")
    message: str = ""


class JobError(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. labels_not_binary, worker_lost.")
    message: str = Field(description="What went wrong and what to do about it.")


class JobResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    output_uri: str
    coreset_uri: str
    manifest_uri: str
    size: int = Field(description="Rows in the coreset.")


class Job(BaseModel):
    id: str
    status: JobStatus
    created_at: str = Field(description="RFC 3339.")
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress
    request: JobRequest = Field(description="The accepted request, with defaults filled in.")
    result: JobResult | None = None
    error: JobError | None = None
    attempts: int = Field(default=0, description="Runs started so far (a lost worker's job may run again).")
    cancel_requested: bool = False


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(default=None, description="Pass as cursor for the next page; null on the last.")


class Manifest(BaseModel):
    """manifest.json of a succeeded job (fields beyond these are kept)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    request: dict[str, Any]
    engine_version: str
    seed: int
    device: str
    dataset: dict[str, Any]
    coreset: dict[str, Any]
    phase_seconds: dict[str, float]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
