"""The names of our Redis keys, all under one prefix (``NACS_REDIS_PREFIX``).

RQ keeps its own keys; we reach those only through RQ's API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names of one deployment (one prefix):

    - ``job(id)``: the job's record (JSON), expiring ``job_ttl_s`` after its last change;
    - ``tenant_jobs(tenant)``: sorted set of the tenant's job ids by creation time;
    - ``tenant_active(tenant)``: set of the tenant's queued and running job ids;
    - ``status("queued" | "running")``: set of the job ids now in that status;
    - ``queued_since``: sorted set of the queued job ids by creation time (the reaper reads
      only the old ones);
    - ``idempotency(tenant, key digest)``: the job an Idempotency-Key made, and its body hash;
    - ``finished``: hash of finished-job counts by status; ``phase_seconds``: hash of
      ``{phase}:sum`` and ``{phase}:count`` over succeeded jobs; ``reaper_lock``.
    """

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:jobs"

    def tenant_active(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:active"

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
    def reaper_lock(self) -> str:
        return f"{self.prefix}reaper"
