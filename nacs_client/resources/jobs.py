"""``client.jobs``: submit selection jobs, follow them and read their results.

:class:`Jobs` (sync) and :class:`AsyncJobs` (async) are thin: each call builds an
operation from :mod:`nacs_client._operations` and lets its client run it.

Arguments of ``create`` and ``create_and_wait``:

- ``dataset_uri``: where the data lives (``file://``, ``s3://``, ``gs://``,
  ``https://``; Parquet, CSV, TSV or JSON Lines).
- ``ratio`` / ``size``: the budget, exactly one: a fraction in (0, 1) or rows.
- ``method``: ``nacs`` (the service's default) or a baseline (``random``, ...).
- ``options``: engine options (``backbone``, ``rounds``, ``remove_rate``, ``seed``, ...).
- ``label_column``, ``feature_columns``, ``numeric_columns``, ``numeric_detection``,
  ``column_names`` (a CSV or TSV file without a header line, or the JSON Lines keys to
  read), ``format``: how to read the data.
- ``output_uri``: where to write the result (default: the tenant's prefix).
- ``idempotency_key``: sent as ``Idempotency-Key``; a new uuid4 per call by
  default, reused on every retry of that call.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nacs_client import _operations as ops
from nacs_client._progress import ProgressOption, progress_callback
from nacs_client.coreset import Coreset, copy_to_local
from nacs_client.types import Job, JobResult, Manifest

if TYPE_CHECKING:
    from nacs_client._client import AsyncClient, Client

__all__ = ["Jobs", "AsyncJobs", "DownloadedResult"]


class DownloadedResult(NamedTuple):
    """Local copies of a job's result files."""

    coreset_path: Path
    manifest_path: Path


def _read_coreset(
    result: JobResult, manifest: Manifest, storage_options: Mapping[str, Any] | None
) -> Coreset:
    return Coreset.read(result.coreset_uri, manifest=manifest, storage_options=storage_options)


def _download(
    result: JobResult,
    directory: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None,
) -> DownloadedResult:
    folder = Path(directory)
    coreset_path = copy_to_local(result.coreset_uri, folder / "coreset.parquet", storage_options)
    manifest_path = copy_to_local(result.manifest_uri, folder / "manifest.json", storage_options)
    return DownloadedResult(coreset_path, manifest_path)


class Jobs:
    """Selection jobs, synchronously (``client.jobs``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        dataset_uri: str,
        *,
        ratio: float | None = None,
        size: int | None = None,
        method: str | None = None,
        options: Mapping[str, Any] | None = None,
        label_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        numeric_columns: Sequence[str] | None = None,
        numeric_detection: bool | None = None,
        column_names: Sequence[str] | None = None,
        format: str | None = None,
        output_uri: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a selection job (``POST /jobs``); returns it queued."""
        endpoint = self._client._endpoint
        request = ops.create_request(
            endpoint,
            dataset_uri,
            ratio=ratio,
            size=size,
            method=method,
            options=options,
            label_column=label_column,
            feature_columns=feature_columns,
            numeric_columns=numeric_columns,
            numeric_detection=numeric_detection,
            column_names=column_names,
            format=format,
            output_uri=output_uri,
            idempotency_key=idempotency_key,
        )
        return self._client._run(ops.call(endpoint, request, Job))

    def get(self, job_id: str) -> Job:
        """The job now (``GET /jobs/{id}``)."""
        return self._client._run(ops.get_job(self._client._endpoint, job_id))

    def list(self, *, status: str | None = None, limit: int | None = None) -> Iterator[Job]:
        """Every job of this key, newest first, fetched page by page as you iterate.

        ``status`` filters by status; ``limit`` is the page size asked of the service.
        """
        ops.check_list_arguments(status, limit)
        return self._iterate(status, limit)

    def _iterate(self, status: str | None, limit: int | None) -> Iterator[Job]:
        endpoint = self._client._endpoint
        cursor: str | None = None
        while True:
            page = self._client._run(
                ops.list_page(endpoint, status=status, limit=limit, cursor=cursor)
            )
            yield from page.jobs
            cursor = ops.next_cursor(page, cursor)
            if cursor is None:
                return

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (``POST /jobs/{id}/cancel``); returns the job.

        A queued job comes back ``cancelled``; a running one comes back still
        ``running`` and stops within seconds (``wait`` then raises JobCancelledError).
        Cancelling a cancelled job returns it; a succeeded or failed one is a ConflictError.
        """
        return self._client._run(ops.cancel_job(self._client._endpoint, job_id))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: ProgressOption = None,
    ) -> Job:
        """Poll until the job ends; return it when it succeeded.

        Raises JobFailedError (with the job's error code and message),
        JobCancelledError, or WaitTimeoutError after ``timeout`` seconds (``None``:
        no limit). ``progress``: ``None`` shows a bar (tqdm) when stderr is a terminal,
        ``True``/``False`` force it, ``"lines"`` prints a plain line on stderr at each
        change of status or phase and each tenth of a phase, a callable is called with
        every polled job.
        """
        on_update, close = progress_callback(progress)
        try:
            return self._client._run(
                ops.wait_for_job(
                    self._client._endpoint,
                    job_id,
                    timeout_s=timeout,
                    poll_interval_s=poll_interval,
                    on_update=on_update,
                )
            )
        finally:
            close()

    def create_and_wait(
        self,
        dataset_uri: str,
        *,
        ratio: float | None = None,
        size: int | None = None,
        method: str | None = None,
        options: Mapping[str, Any] | None = None,
        label_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        numeric_columns: Sequence[str] | None = None,
        numeric_detection: bool | None = None,
        column_names: Sequence[str] | None = None,
        format: str | None = None,
        output_uri: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: ProgressOption = None,
    ) -> Job:
        """``create`` then ``wait``: returns the succeeded job."""
        job = self.create(
            dataset_uri,
            ratio=ratio,
            size=size,
            method=method,
            options=options,
            label_column=label_column,
            feature_columns=feature_columns,
            numeric_columns=numeric_columns,
            numeric_detection=numeric_detection,
            column_names=column_names,
            format=format,
            output_uri=output_uri,
            idempotency_key=idempotency_key,
        )
        return self.wait(job.id, timeout=timeout, poll_interval=poll_interval, progress=progress)

    def manifest(self, job_id: str) -> Manifest:
        """The manifest of a succeeded job (``GET /jobs/{id}/result``)."""
        return self._client._run(ops.get_manifest(self._client._endpoint, job_id))

    def report_url(self, job_id: str) -> str:
        """Where the job's report is served (``GET /jobs/{id}/report``; it needs the API key
        in the Authorization header, as every route)."""
        return ops.report_url(self._client._endpoint, job_id)

    def report(self, job_id: str) -> str:
        """The report of a succeeded job: one self-contained HTML page (plots inline, no
        script). A job that has not succeeded is a ConflictError that says why."""
        return self._client._run(ops.get_report(self._client._endpoint, job_id))

    def result(self, job_id: str, *, storage_options: Mapping[str, Any] | None = None) -> Coreset:
        """The coreset of a succeeded job, read from its ``coreset_uri``, with its manifest.

        ``storage_options`` go to fsspec (default: the client's).
        """
        result, manifest = self._client._run(ops.finished_result(self._client._endpoint, job_id))
        options = self._client.storage_options if storage_options is None else storage_options
        return _read_coreset(result, manifest, options)

    def download(
        self,
        job_id: str,
        directory: str | os.PathLike[str],
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> DownloadedResult:
        """Copy ``coreset.parquet`` and ``manifest.json`` of a succeeded job into ``directory``."""
        result, _ = self._client._run(ops.finished_result(self._client._endpoint, job_id))
        options = self._client.storage_options if storage_options is None else storage_options
        return _download(result, directory, options)


class AsyncJobs:
    """Selection jobs, asynchronously (``client.jobs`` of an AsyncClient); see :class:`Jobs`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        dataset_uri: str,
        *,
        ratio: float | None = None,
        size: int | None = None,
        method: str | None = None,
        options: Mapping[str, Any] | None = None,
        label_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        numeric_columns: Sequence[str] | None = None,
        numeric_detection: bool | None = None,
        column_names: Sequence[str] | None = None,
        format: str | None = None,
        output_uri: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a selection job (``POST /jobs``); returns it queued."""
        endpoint = self._client._endpoint
        request = ops.create_request(
            endpoint,
            dataset_uri,
            ratio=ratio,
            size=size,
            method=method,
            options=options,
            label_column=label_column,
            feature_columns=feature_columns,
            numeric_columns=numeric_columns,
            numeric_detection=numeric_detection,
            column_names=column_names,
            format=format,
            output_uri=output_uri,
            idempotency_key=idempotency_key,
        )
        return await self._client._run(ops.call(endpoint, request, Job))

    async def get(self, job_id: str) -> Job:
        """The job now (``GET /jobs/{id}``)."""
        return await self._client._run(ops.get_job(self._client._endpoint, job_id))

    def list(self, *, status: str | None = None, limit: int | None = None) -> AsyncIterator[Job]:
        """Every job of this key, newest first: ``async for job in client.jobs.list():``."""
        ops.check_list_arguments(status, limit)
        return self._iterate(status, limit)

    async def _iterate(self, status: str | None, limit: int | None) -> AsyncIterator[Job]:
        endpoint = self._client._endpoint
        cursor: str | None = None
        while True:
            page = await self._client._run(
                ops.list_page(endpoint, status=status, limit=limit, cursor=cursor)
            )
            for job in page.jobs:
                yield job
            cursor = ops.next_cursor(page, cursor)
            if cursor is None:
                return

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (``POST /jobs/{id}/cancel``); returns the job."""
        return await self._client._run(ops.cancel_job(self._client._endpoint, job_id))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: ProgressOption = None,
    ) -> Job:
        """Poll until the job ends; return it when it succeeded (see :meth:`Jobs.wait`)."""
        on_update, close = progress_callback(progress)
        try:
            return await self._client._run(
                ops.wait_for_job(
                    self._client._endpoint,
                    job_id,
                    timeout_s=timeout,
                    poll_interval_s=poll_interval,
                    on_update=on_update,
                )
            )
        finally:
            close()

    async def create_and_wait(
        self,
        dataset_uri: str,
        *,
        ratio: float | None = None,
        size: int | None = None,
        method: str | None = None,
        options: Mapping[str, Any] | None = None,
        label_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        numeric_columns: Sequence[str] | None = None,
        numeric_detection: bool | None = None,
        column_names: Sequence[str] | None = None,
        format: str | None = None,
        output_uri: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: ProgressOption = None,
    ) -> Job:
        """``create`` then ``wait``: returns the succeeded job."""
        job = await self.create(
            dataset_uri,
            ratio=ratio,
            size=size,
            method=method,
            options=options,
            label_column=label_column,
            feature_columns=feature_columns,
            numeric_columns=numeric_columns,
            numeric_detection=numeric_detection,
            column_names=column_names,
            format=format,
            output_uri=output_uri,
            idempotency_key=idempotency_key,
        )
        return await self.wait(
            job.id, timeout=timeout, poll_interval=poll_interval, progress=progress
        )

    async def manifest(self, job_id: str) -> Manifest:
        """The manifest of a succeeded job (``GET /jobs/{id}/result``)."""
        return await self._client._run(ops.get_manifest(self._client._endpoint, job_id))

    def report_url(self, job_id: str) -> str:
        """Where the job's report is served (``GET /jobs/{id}/report``; it needs the API key
        in the Authorization header, as every route)."""
        return ops.report_url(self._client._endpoint, job_id)

    async def report(self, job_id: str) -> str:
        """The report of a succeeded job: one self-contained HTML page (plots inline, no
        script). A job that has not succeeded is a ConflictError that says why."""
        return await self._client._run(ops.get_report(self._client._endpoint, job_id))

    async def result(
        self, job_id: str, *, storage_options: Mapping[str, Any] | None = None
    ) -> Coreset:
        """The coreset of a succeeded job (the file is read in a worker thread)."""
        import anyio.to_thread

        result, manifest = await self._client._run(
            ops.finished_result(self._client._endpoint, job_id)
        )
        options = self._client.storage_options if storage_options is None else storage_options
        return await anyio.to_thread.run_sync(_read_coreset, result, manifest, options)

    async def download(
        self,
        job_id: str,
        directory: str | os.PathLike[str],
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> DownloadedResult:
        """Copy ``coreset.parquet`` and ``manifest.json`` of a succeeded job into ``directory``."""
        import anyio.to_thread

        result, _ = await self._client._run(ops.finished_result(self._client._endpoint, job_id))
        options = self._client.storage_options if storage_options is None else storage_options
        return await anyio.to_thread.run_sync(_download, result, directory, options)
