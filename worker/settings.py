"""Settings shared by the API and the workers: Redis, queue, job lifetimes, storage.

Every setting is an environment variable ``NACS_<NAME>`` (``.env.example`` lists
them with their defaults). The API's own settings extend this class.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def local_uri(path: str | os.PathLike[str]) -> str:
    """``file://`` URI of a local path, made absolute."""
    return "file://" + os.path.abspath(os.path.expanduser(os.fspath(path)))


class WorkerSettings(BaseSettings):
    """What both the API and the workers need to agree on."""

    model_config = SettingsConfigDict(env_prefix="NACS_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis holding the queue and the job records (redis://, rediss:// or unix://).",
    )
    redis_prefix: str = Field(
        default="nacs:", description="Prefix of every Redis key of ours; lets several deployments share one Redis."
    )
    queue: str = Field(default="nacs", description="Name of the RQ queue jobs go to.")
    job_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a job record stays queryable after it was created."
    )
    job_timeout_s: int = Field(
        default=6 * 3600, ge=1, description="A running job is stopped and failed with code timeout after this long."
    )
    max_attempts: int = Field(
        default=2, ge=1, le=10, description="Runs of a job whose worker died before it gives up (code worker_lost)."
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, description="How often a running job writes its heartbeat and looks for a cancel request."
    )
    heartbeat_timeout_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older than this is taken as lost."
    )
    reaper_interval_s: float = Field(
        default=10.0, gt=0, description="How often workers and the API look for lost jobs and unfinished cancels."
    )
    cancel_grace_s: float = Field(
        default=10.0, gt=0, description="After a cancel request, how long a running job has to stop by itself before its process is stopped."
    )
    storage_uri: str = Field(
        default="./.nacs/storage",
        description="Default place for outputs: a local folder, s3://bucket/prefix or gs://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (MinIO, moto); credentials from the AWS_* variables."
    )
    storage_timeout_s: float = Field(
        default=10.0, gt=0, description="Connect and read timeout of object-store calls."
    )
    storage_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a job step that failed on a transient storage or network error."
    )
    retry_backoff_s: float = Field(
        default=2.0, ge=0, description="First wait before a retry; doubles at each retry."
    )
    allow_private_urls: bool = Field(
        default=False, description="Allow https:// dataset URLs whose host is a loopback, private or link-local address."
    )
    workdir: str | None = Field(
        default=None, description="Local scratch folder of the workers (default: the system temporary folder)."
    )

    @field_validator("storage_uri")
    @classmethod
    def _normalise_storage(cls, value: str) -> str:
        value = value.strip()
        if "://" not in value:
            value = local_uri(value)
        return value.rstrip("/")

    @field_validator("redis_prefix")
    @classmethod
    def _non_empty_prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("redis_prefix: must not be empty")
        return value

    def storage_path(self) -> Path | None:
        """The local folder of ``storage_uri``, or None for an object store."""
        if self.storage_uri.startswith("file://"):
            return Path(self.storage_uri[len("file://") :])
        return None
