"""The names of our Redis keys, all under one prefix (``NACS_REDIS_PREFIX``).

RQ keeps its own keys; we reach those only through RQ's API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names of one deployment (one prefix): ``job`` (the record, JSON), ``tenant_jobs``
    and ``queued_since`` (sorted sets of job ids by creation time), ``tenant_active`` and
    ``status`` (sets of queued or running job ids), ``idempotency`` (the job an
    Idempotency-Key made, and its body hash), ``finished``, ``phase_seconds`` and
    ``shard_jobs`` (counters for /metrics), ``shard_progress`` (each shard job's share done,
    of a job spread over several), ``reaper_lock``."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:jobs"

    def tenant_active(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:active"

    def tenant_outputs(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:outputs"

    def tenant_output_ends(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:output_ends"

    def status(self, status: str) -> str:
        return f"{self.prefix}status:{status}"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        return f"{self.prefix}idempotency:{tenant}:{key_digest}"

    @property
    def queued_since(self) -> str:
        return f"{self.prefix}queued_since"

    @property
    def finished(self) -> str:
        return f"{self.prefix}finished"

    @property
    def phase_seconds(self) -> str:
        return f"{self.prefix}phase_seconds"

    @property
    def shard_jobs(self) -> str:
        return f"{self.prefix}shard_jobs"

    def shard_progress(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:shards"

    @property
    def reaper_lock(self) -> str:
        return f"{self.prefix}reaper"


def output_folder(output_uri: str) -> str:
    """An output URI as a member of ``Keys.tenant_outputs``: with one trailing slash, so that
    the folders inside it are exactly the members it is a prefix of."""
    return output_uri.rstrip("/") + "/"


def enclosing_folders(folder: str) -> list[str]:
    """The folders that hold ``folder`` (an ``output_folder``), outermost first, e.g.
    s3://b/, s3://b/o/ for s3://b/o/x/."""
    scheme, sep, rest = folder.partition("://")
    base = scheme + sep + ("/" if rest.startswith("/") else "")
    parts = [part for part in rest.split("/") if part]
    return [base + "/".join(parts[:depth]) + "/" for depth in range(1, len(parts))]
