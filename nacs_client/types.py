"""Typed responses of the service (docs/design/API.md). Unknown fields are kept, since the API grows
additively."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

__all__ = [
    "JobStatus",
    "FINISHED_STATUSES",
    "Progress",
    "JobResult",
    "JobError",
    "Job",
    "JobPage",
    "Manifest",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Progress(_Model):
    """Where a running job is: ``phase`` (loading, selecting, denoising, auditing, writing)
    and ``fraction`` in [0, 1]."""

    phase: str | None = None
    fraction: float = 0.0
    message: str = ""


class JobResult(_Model):
    """Where a succeeded job's outputs are, and how many rows it selected."""

    output_uri: str
    coreset_uri: str
    manifest_uri: str
    size: int | None = None


class JobError(_Model):
    """Why a job failed: a stable ``code`` and a message a person can act on."""

    code: str
    message: str
    details: Any = None


class Job(_Model):
    """One selection job, as ``GET /jobs/{id}`` returns it."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    result: JobResult | None = None
    error: JobError | None = None

    @property
    def is_finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in FINISHED_STATUSES


class JobPage(_Model):
    """One page of ``GET /jobs``, newest first; ``next_cursor`` is ``None`` on the last page."""

    jobs: list[Job] = Field(validation_alias=AliasChoices("jobs", "items", "data"))
    next_cursor: str | None = None


class Manifest(_Model):
    """``manifest.json`` of a succeeded job (``GET /jobs/{id}/result``).

    ``dataset`` and ``coreset`` hold ``rows`` and ``clicks`` (and the dataset's
    ``fingerprint``); every field beyond those below is kept as an extra
    attribute (``manifest.model_extra``).
    """

    job_id: str | None = None
    request: dict[str, Any] | None = None
    engine_version: str | None = None
    seed: int | None = None
    device: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)
    coreset: dict[str, Any] = Field(default_factory=dict)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    noise: dict[str, Any] | None = None
    """The estimated flip rate and wrong-label shares, and the rows set aside (nacs)."""
    audit: dict[str, Any] | None = None
    """The coreset against random subsets on held-back rows: per family and a ``verdict``."""

    @property
    def audit_verdict(self) -> str | None:
        """``better``, ``level`` or ``worse`` when the job was audited, else None."""
        verdict = (self.audit or {}).get("verdict")
        return verdict if isinstance(verdict, str) else None

    @property
    def data_rows(self) -> int | None:
        """Rows in the dataset as the service read it, when the manifest records them."""
        return _count(self.dataset.get("rows"))

    @property
    def coreset_rows(self) -> int | None:
        """Rows in the coreset, when the manifest records them."""
        return _count(self.coreset.get("rows"))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
