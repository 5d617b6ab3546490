"""Python SDK and CLI for the NaCS coreset service.

```python
from nacs_client import Client

with Client() as client:  # $NACS_BASE_URL, $NACS_API_KEY
    job = client.jobs.create_and_wait("s3://bucket/train.parquet", ratio=0.1)
    coreset = client.jobs.result(job.id)
```

Nothing heavy is imported here: no torch, pandas or server code.
"""

from nacs_client._client import DEFAULT_BASE_URL, AsyncClient, Client
from nacs_client._retry import RetryPolicy
from nacs_client.coreset import Coreset
from nacs_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    JobCancelledError,
    JobFailedError,
    NacsError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    WaitTimeoutError,
)
from nacs_client.resources.jobs import DownloadedResult
from nacs_client.types import Job, JobError, JobPage, JobResult, JobStatus, Manifest, Progress

__all__ = [
    "Client",
    "AsyncClient",
    "DEFAULT_BASE_URL",
    "RetryPolicy",
    "Coreset",
    "DownloadedResult",
    "Job",
    "JobStatus",
    "Progress",
    "JobResult",
    "JobError",
    "JobPage",
    "Manifest",
    "NacsError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "JobFailedError",
    "JobCancelledError",
    "WaitTimeoutError",
]
