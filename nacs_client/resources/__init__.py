"""The service's resources, one module each."""

from nacs_client.resources.jobs import AsyncJobs, Jobs

__all__ = ["Jobs", "AsyncJobs"]
