"""Settings shared by the API and the workers: Redis, queue, job lifetimes, storage.

Every setting is an environment variable ``NACS_<NAME>`` (``.env.example`` lists
them with their defaults). The API adds its own (``service.settings.ApiSettings``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def local_uri(path: str | os.PathLike[str]) -> str:
    """``file://`` URI of a local path, made absolute."""
    return "file://" + os.path.abspath(os.path.expanduser(os.fspath(path)))


class SharedSettings(BaseSettings):
    """What the API and the workers need to agree on. Each field's docstring is its
    description."""

    model_config = SettingsConfigDict(
        env_prefix="NACS_", extra="ignore", use_attribute_docstrings=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the queue and the job records (redis://, rediss:// or unix://)."""
    redis_prefix: str = "nacs:"
    """Prefix of every Redis key of ours; lets several deployments share one Redis."""
    queue: str = "nacs"
    """Name of the RQ queue jobs go to."""
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    """How long a job record stays queryable after its last change."""
    job_timeout_s: int = Field(default=6 * 3600, ge=1)
    """A running job is stopped and failed with code timeout after this long."""
    max_attempts: int = Field(default=2, ge=1, le=10)
    """Runs of a job whose worker died before it gives up (code worker_lost)."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    """How often a running job writes its heartbeat and looks for a cancel request."""
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    """A running job whose heartbeat is older than this is taken as lost."""
    reaper_interval_s: float = Field(default=10.0, gt=0)
    """How often workers and the API look for lost jobs and unfinished cancels."""
    cancel_grace_s: float = Field(default=10.0, gt=0)
    """After a cancel request, how long a running job has to stop by itself before its
    process is stopped."""
    storage_uri: str = "./.nacs/storage"
    """Default place for outputs: a local folder, s3://bucket/prefix or gs://bucket/prefix."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible store (MinIO, moto); credentials from AWS_* variables."""
    storage_timeout_s: float = Field(default=10.0, gt=0)
    """Connect and read timeout of object-store calls."""
    storage_retries: int = Field(default=3, ge=0, le=10)
    """Retries of a job step that failed on a transient storage or network error."""
    retry_backoff_s: float = Field(default=2.0, ge=0)
    """First wait before a retry; doubles at each retry."""
    allow_private_urls: bool = False
    """Allow https:// dataset URLs whose host is a loopback, private or link-local address."""
    torch_threads: int = Field(default=1, ge=1, le=256)
    """Threads of torch's CPU operations in every job a worker runs: the same on every worker,
    so that a job's floating-point results (and so its coreset) do not depend on which worker
    ran which of its shards."""
    workdir: str | None = None
    """Local scratch folder of the workers (default: the system temporary folder)."""
    insecure_local: bool = False
    """With no keys configured, serve one tenant 'local' without authentication (local use)."""
    allowed_uris: str | None = None
    """Comma-separated prefixes dataset URIs must start with (file:///data/,s3://bucket/,
    https://host/); an entry tenant=prefix applies to that tenant only; '*' allows any.
    Unset: any in insecure local mode, none otherwise. The API checks a request against them
    and a worker checks a local dataset again when it opens it, so both need the same."""

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

    def allowed_prefixes(self, tenant: str | None = None) -> list[str] | None:
        """Dataset URI prefixes ``tenant`` may read; None means any.

        Entries apply to every tenant, or to one when written ``tenant=prefix``.
        """
        if self.allowed_uris is None or not self.allowed_uris.strip():
            return None if self.insecure_local else []
        entries = []
        for entry in filter(None, (e.strip() for e in self.allowed_uris.split(","))):
            owner, sep, prefix = entry.partition("=")
            if sep and "://" not in owner:
                if owner.strip() == tenant:
                    entries.append(prefix.strip())
            else:
                entries.append(entry)
        return None if "*" in entries else entries

    def storage_path(self) -> Path | None:
        """The local folder of ``storage_uri``, or None for an object store."""
        if self.storage_uri.startswith("file://"):
            return Path(self.storage_uri[len("file://") :])
        return None


def settings_problem(error: Exception) -> str:
    """One line per bad setting, named as its environment variable."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"NACS_{'_'.join(str(p) for p in item['loc']).upper()}: {item['msg']}"
            for item in error.errors()
        )
    return str(error)
