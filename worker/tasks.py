"""The work of one job: read the data, run the engine, write the result, then the manifest.

``execute`` runs a request to an output URI with no Redis (the ``nacs select``
command calls it); ``run_job`` is what RQ runs: it adds the job record's
lifecycle, heartbeats, cancellation, retries of transient storage faults and
the mapping of every failure to a code and a message.

This module imports the engine lazily, inside the functions, so the worker's
parent process (which forks one work horse per job) never starts CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pydantic
import redis

from nacs_engine.errors import DataError, SelectionCancelled, first_cause
from worker.errors import JobFailed, is_transient
from worker.local_files import ConfinedFileSystem, allowed_roots
from worker.outputs import (
    CORESET_FILE,
    MANIFEST_FILE,
    REPORT_HTML,
    REPORT_JSON,
    CoresetSummary,
    DatasetSummary,
    Manifest,
    coreset_table,
    result_owner,
    write_coreset,
    write_manifest,
)
from worker.progress import JobProgress
from worker.records import (
    InvalidTransition,
    JobError,
    JobResult,
    JobStatus,
    Progress,
    RecordStore,
    cancelled_progress,
    connect,
    utc_now,
)
from worker.report import build_report, render_html, report_json
from worker.settings import SharedSettings
from worker.spec import JobRequest
from worker.storage import (
    OutputFolder,
    join_uri,
    normalise_uri,
    open_output,
    private_address,
    scheme_of,
    storage_options,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float, str], None]
T = TypeVar("T")


def execute(
    request: JobRequest, output_uri: str, *, job_id: str,
    progress: ProgressCallback | None = None, settings: SharedSettings | None = None,
    tenant: str | None = None,
) -> Manifest:
    """Select a coreset for ``request`` and write it under ``output_uri``; return the manifest.

    progress(phase, fraction, message) is called with phases loading,
    selecting, denoising, auditing and writing; it may raise SelectionCancelled to stop.
    Raises DataError for unusable data, JobFailed("storage_unavailable", ...)
    when the store keeps failing after the configured retries. The engine's
    per-thread memory is handed back when it returns or raises; so is every file it wrote,
    when it raises: it leaves a whole result or nothing of its own.

    With ``tenant`` (a job of the service), a local dataset is opened only inside the folders
    the tenant may read, and a local output folder only inside the tenant's folder of the
    store, neither through a symbolic link (``worker.local_files``; JobFailed
    ``dataset_uri_refused`` / ``output_uri_refused``); and an output folder that holds another
    job's result is refused (``output_uri_taken``): a finished job's result never changes.
    """
    manifest = execute_or_hand_over(
        request, output_uri, job_id=job_id, progress=progress, settings=settings, tenant=tenant
    )
    if manifest is None:
        raise RuntimeError("execute: a job without sharding was handed over")
    return manifest


def execute_or_hand_over(
    request: JobRequest, output_uri: str, *, job_id: str,
    progress: ProgressCallback | None = None, settings: SharedSettings | None = None,
    tenant: str | None = None, sharding: Any | None = None,
) -> Manifest | None:
    """``execute``, or with ``sharding`` (``worker.shards.Sharding``, in a run of the queue)
    for data of more than one shard of a teacher method: encode it shard by shard into the
    job's scratch folder, hand the job over to its shard jobs and return None."""
    from nacs_engine.selection import release_workspace

    settings = settings or SharedSettings()
    report = progress or (lambda phase, fraction, message: None)
    config = request.to_config()
    output_uri = normalise_uri(output_uri)
    phase_seconds: dict[str, float] = {}

    started = time.perf_counter()
    report("loading", 0.0, f"reading {request.dataset_uri}")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(release_workspace)
        workdir = cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{job_id}-", dir=settings.workdir)
        )
        def retried(what: str, phase: str, step: Callable[[], T]) -> T:
            return _with_retries(what, step, settings, report, phase)

        if tenant is not None:
            _refuse_another_result(output_uri, job_id, settings, tenant, retried)

        source = retried(
            "opening the dataset", "loading", lambda: _dataset_source(request, settings, tenant)
        )
        shard_rows = sharding.shard_rows(config) if sharding is not None else None
        if shard_rows is not None:
            from nacs_engine.data.shards import ShardedSource

            source = ShardedSource(source, shard_rows)
        encoder = retried(
            "reading the dataset", "loading", lambda: _fit_encoder(request, config, source, report)
        )
        if sharding is not None and shard_rows is not None and encoder.fitted_rows > shard_rows:
            sharding.hand_over(
                source, encoder, config, report=report, retried=retried, workdir=workdir
            )
            return None
        data = retried(
            "reading the dataset",
            "loading",
            lambda: encoder.transform(
                source, workdir=workdir, expected_rows=encoder.fitted_rows,
                progress=lambda part, text: report("loading", 0.5 + 0.5 * part, text),
            ),
        )
        phase_seconds["loading"] = time.perf_counter() - started
        report("loading", 1.0, f"{data.n_rows} rows, {data.n_fields} fields")
        return deliver(
            request, config, data, output_uri, job_id=job_id, report=report, settings=settings,
            tenant=tenant, phase_seconds=phase_seconds, cleanup=cleanup,
        )


def encoder_numeric_columns(request: JobRequest) -> list[str] | None:
    """The encoder's numeric columns for ``request``: the named ones; with none named, None
    (it detects them) or, with numeric_detection false, [] (none)."""
    if request.numeric_columns:
        return list(request.numeric_columns)
    return None if request.numeric_detection else []


def _fit_encoder(request: JobRequest, config: Any, source: Any, report: ProgressCallback) -> Any:
    """The encoder's vocabularies, counted in the first pass over ``source`` (a DataError
    names the shard of a ``ShardedSource``)."""
    from nacs_engine.data import Encoder

    encoder = Encoder(
        label_column=request.label_column, feature_columns=request.feature_columns,
        numeric_columns=encoder_numeric_columns(request), min_count=config.min_count,
    )
    naming_shard = getattr(source, "naming_shard", None)
    with naming_shard() if naming_shard is not None else contextlib.nullcontext():
        return encoder.fit(source, progress=lambda part, text: report("loading", 0.5 * part, text))


def deliver(
    request: JobRequest, config: Any, data: Any, output_uri: str, *, job_id: str,
    report: ProgressCallback, settings: SharedSettings, tenant: str | None,
    phase_seconds: dict[str, float], cleanup: contextlib.ExitStack,
    teacher_cache: Any | None = None, shards: Callable[[], dict[str, Any]] | None = None,
    teacher_seconds: float = 0.0,
) -> Manifest:
    """Select from the encoded ``data``, write the coreset, then the manifest; what it wrote is
    removed when ``cleanup`` closes on an error.

    For a job spread over workers (``worker.shards``): ``teacher_cache`` holds its teacher,
    ``teacher_seconds`` (the wall time of its fold jobs) counts into the selecting phase, and
    ``shards()`` gives the shard plan and the time of every shard job for the manifest."""
    from nacs_engine.pipeline import select_coreset

    selecting_started = time.perf_counter()
    result = select_coreset(data, config, progress=report, teacher_cache=teacher_cache)
    if not result.diagnostics.get("phase_seconds"):
        phase_seconds["selecting"] = time.perf_counter() - selecting_started
    return write_result(
        request, config, data, result, output_uri, job_id=job_id, report=report,
        settings=settings, tenant=tenant, phase_seconds=phase_seconds, cleanup=cleanup,
        shards=shards, teacher_seconds=teacher_seconds,
    )


def write_result(
    request: JobRequest, config: Any, data: Any, result: Any, output_uri: str, *, job_id: str,
    report: ProgressCallback, settings: SharedSettings, tenant: str | None,
    phase_seconds: dict[str, float], cleanup: contextlib.ExitStack,
    shards: Callable[[], dict[str, Any]] | None = None, teacher_seconds: float = 0.0,
) -> Manifest:
    """Write the coreset ``result`` (a ``CoresetResult`` of ``data``), its report, then the
    manifest; what it wrote is removed when ``cleanup`` closes on an error. The engine's phase
    times join ``phase_seconds``; ``teacher_seconds`` counts into the selecting phase."""
    import nacs_engine

    def retried(what: str, phase: str, step: Callable[[], T]) -> T:
        return _with_retries(what, step, settings, report, phase)

    diagnostics = dict(result.diagnostics)
    engine_seconds = dict(diagnostics.get("phase_seconds") or {})
    phase_seconds.update({k: float(v) for k, v in engine_seconds.items()})
    phase_seconds["selecting"] = phase_seconds.get("selecting", 0.0) + teacher_seconds

    writing_started = time.perf_counter()
    report("writing", 0.0, f"writing {result.size} rows to {output_uri}")
    folder = cleanup.enter_context(open_output(output_uri, settings, tenant))
    # The manifest, written last, marks a result whole: an earlier run's result goes first,
    # its manifest before its files, so that no reader takes it for the files written now and
    # a run that fails leaves no part of either (a job of the service removes only its own:
    # another job's result is never replaced).
    retried(
        "removing the earlier result", "writing",
        lambda: _remove_earlier_result(folder, job_id if tenant is not None else None),
    )
    written: list[str] = []
    cleanup.push(lambda kind, error, trace: _remove_on_error(folder, written, error))
    table = coreset_table(
        result.rows, result.labels, result.soft_labels, result.weights, result.uncertainty
    )
    written.append(CORESET_FILE)
    coreset_uri = retried(
        "writing the coreset", "writing",
        lambda: write_coreset(folder, table, settings.workdir),
    )
    phase_seconds["writing"] = time.perf_counter() - writing_started
    created_at = utc_now()
    shard_plan = shards() if shards is not None else None
    report("writing", 0.3, "writing the report")
    content = build_report(
        job_id=job_id, request=request.model_dump(mode="json"), method=config.method,
        engine_version=nacs_engine.__version__, created_at=created_at,
        field_names=data.field_names, field_dims=data.field_dims, features=data.features,
        data_labels=data.labels, rows=result.rows, labels=result.labels,
        soft_labels=result.soft_labels, weights=result.weights,
        uncertainty=result.uncertainty, diagnostics=diagnostics, phase_seconds=phase_seconds,
    )
    written.append(REPORT_JSON)
    retried(
        "writing the report", "writing",
        lambda: folder.write(REPORT_JSON, report_json(content)),
    )
    page = render_html(content)
    written.append(REPORT_HTML)
    retried("writing the report", "writing", lambda: folder.write(REPORT_HTML, page.encode()))
    phase_seconds["writing"] = time.perf_counter() - writing_started
    dataset = DatasetSummary(
        uri=request.dataset_uri, fingerprint=data.fingerprint, rows=data.n_rows,
        clicks=data.n_clicks, fields=list(data.field_names),
        field_dims=[int(d) for d in data.field_dims],
        numeric_buckets=dict(data.metadata.get("numeric_buckets", {})),
        whole_number_columns=list(data.metadata.get("whole_number_columns", [])),
        label_values=str(data.metadata.get("label_values", "0/1")),
        unread_keys=dict(data.metadata.get("unread_keys", {})),
        unread_key_count=int(data.metadata.get("unread_key_count", 0)),
    )
    weight_sum = float(result.weights.sum())
    coreset = CoresetSummary(
        uri=coreset_uri, rows=result.size, clicks=int(float(result.labels.sum())),
        soft_label_mean=float(result.soft_labels.mean()) if result.size else 0.0,
        weighted_soft_label_mean=(
            float((result.soft_labels * result.weights).sum()) / weight_sum
            if weight_sum > 0 else None
        ),
        weight_sum=weight_sum,
    )
    manifest = Manifest(
        job_id=job_id, request=request.model_dump(mode="json"),
        engine_version=nacs_engine.__version__, method=config.method, seed=config.seed,
        device=str(diagnostics.get("device", config.device)), host=platform.node(),
        created_at=created_at, dataset=dataset, coreset=coreset, output_uri=output_uri,
        manifest_uri=join_uri(output_uri, MANIFEST_FILE),
        files={
            "coreset": CORESET_FILE, "report_html": REPORT_HTML, "report_json": REPORT_JSON,
            "manifest": MANIFEST_FILE,
        },
        phase_seconds={k: round(v, 4) for k, v in phase_seconds.items()},
        noise=diagnostics.pop("noise", None), audit=diagnostics.pop("audit", None),
        shards=shard_plan, diagnostics=diagnostics,
    )
    report("writing", 0.5, "writing the manifest")
    written.append(MANIFEST_FILE)
    retried("writing the manifest", "writing", lambda: write_manifest(folder, manifest))
    report("writing", 1.0, "result written")
    return manifest


def _refuse_another_result(
    output_uri: str, job_id: str, settings: SharedSettings, tenant: str,
    retried: Callable[[str, str, Callable[[], str | None]], str | None],
) -> None:
    """Fail at once when the output folder holds another job's result (a finished job's
    result never changes); a run of this job may write its own folder again."""

    def owner() -> str | None:
        try:
            with open_output(output_uri, settings, tenant, create=False) as folder:
                return result_owner(folder)
        except FileNotFoundError:
            return None

    found = retried("reading the output folder", "loading", owner)
    if found is not None and found != job_id:
        raise _taken(output_uri, found)


# A run's working folder (the encoded data) is "nacs-{job id}-{random}" in the workdir.
WORKDIR_PREFIX = "nacs-"
_SERVICE_WORKDIR = re.compile(rf"{WORKDIR_PREFIX}([0-9a-f]{{32}})-[^/]+")


def sweep_workdirs(store: RecordStore) -> list[str]:
    """Remove the working folders that runs of this deployment's jobs left in the workdir when
    their process was killed (a cancel past its grace, a lost worker, out of memory): those of
    jobs whose record says they are not running. Returns the folders removed. A folder of a job
    without a record here (another deployment's, or one whose record expired) goes only once
    it is older than a record lives and a run lasts (``job_ttl_s`` + ``job_timeout_s``)."""
    root = store.settings.workdir or tempfile.gettempdir()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    matches = [(name, _SERVICE_WORKDIR.fullmatch(name)) for name in names]
    found = [(name, match.group(1)) for name, match in matches if match]
    if not found:
        return []
    records = store.get_many([job_id for _, job_id in found])
    oldest = time.time() - store.settings.job_ttl_s - store.settings.job_timeout_s
    removed = []
    for (name, _), record in zip(found, records, strict=True):
        path = os.path.join(root, name)
        if record is not None and record.status == JobStatus.running:
            continue
        try:
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            if record is None and os.path.getmtime(path) > oldest:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _remove_earlier_result(folder: OutputFolder, job_id: str | None) -> None:
    """Remove the result ``folder`` holds, if any: its manifest, then the files of a result
    (only those names, whatever the manifest lists). job_id: when given, only a result of
    that job is removed; another job's is output_uri_taken."""
    owner = result_owner(folder)
    if owner is None:
        return
    if job_id is not None and owner != job_id:
        raise _taken(folder.uri, owner)
    folder.remove(MANIFEST_FILE)
    remove_result(folder, [CORESET_FILE, REPORT_JSON, REPORT_HTML])


def _taken(output_uri: str, owner: str) -> JobFailed:
    return JobFailed(
        "output_uri_taken",
        f"output_uri: {output_uri} holds the result of job {owner}; a finished job's result "
        "is never replaced: choose another folder",
    )


def _dataset_source(request: JobRequest, settings: SharedSettings, tenant: str | None) -> Any:
    """What the engine reads: the dataset's URI, or, for a local dataset of a tenant limited
    to some folders, a source that reads only inside them."""
    from nacs_engine.data import open_source

    uri = normalise_uri(request.dataset_uri)
    roots = allowed_roots(settings, tenant) if tenant is not None else None
    opened = partial(open_source, uri, format=request.format, column_names=request.column_names)
    if roots is None or scheme_of(uri) != "file":
        return opened(storage_options=storage_options(uri, settings) or None)
    return opened(filesystem=ConfinedFileSystem(roots, uri))


def _remove_on_error(folder: OutputFolder, written: list[str], error: BaseException | None) -> None:
    """After a failure, remove what the job wrote: the manifest first, so that no reader sees a
    result without its files."""
    if error is not None:
        remove_result(folder, list(reversed(written)))


def remove_result(folder: OutputFolder, names: list[str]) -> None:
    """Remove ``names`` from ``folder``, each as far as the store allows (best effort: a
    failure is logged)."""
    for name in names:
        try:
            folder.remove(name)
        except Exception as error:  # noqa: BLE001 - what cannot be removed is left, and said
            log.warning("%s: %s not removed (%s)", folder.uri, name, _short(error))


def _with_retries(
    what: str, step: Callable[[], T], settings: SharedSettings, report: ProgressCallback, phase: str
) -> T:
    """Run ``step``, retrying transient storage faults with doubling waits, then fail clearly."""
    attempts = settings.storage_retries + 1
    wait_s = settings.retry_backoff_s
    attempt = 1
    while True:
        try:
            return step()
        except (SelectionCancelled, JobFailed):
            raise
        except Exception as error:
            cause = _transient_cause(error)
            if cause is None:
                raise
            if attempt == attempts:
                message = (
                    f"{what} failed {attempts} time(s): the store or network did not answer "
                    f"({_short(cause)}); check the storage endpoint and try again"
                )
                raise JobFailed("storage_unavailable", message) from error
            retry = f"retry {attempt} of {attempts - 1} in {wait_s:g} s"
            report(phase, 0.0, f"{what}: storage did not answer ({_short(cause)}); {retry}")
        time.sleep(wait_s)
        wait_s *= 2
        attempt += 1


def _transient_cause(error: BaseException) -> BaseException | None:
    """The passing storage or network fault behind ``error`` (also one wrapped in a
    DataError), or None."""
    return first_cause(error, is_transient)


def _short(error: BaseException, limit: int = 240) -> str:
    name = type(error).__name__
    text = f"{name}: {error}".splitlines()[0] if str(error) else name
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_job(job_id: str, prefix: str | None = None) -> dict[str, Any]:
    """What RQ runs for a job id: the record's lifecycle around ``execute``."""
    from rq.timeouts import JobTimeoutException

    settings = SharedSettings()
    if prefix is not None and prefix != settings.redis_prefix:
        settings = settings.model_copy(update={"redis_prefix": prefix})
    store = RecordStore(connect(settings.redis_url), settings)
    run: dict[str, int | float] = {"begun": time.monotonic()}
    try:
        return _run_job(job_id, store, settings, run)
    except JobTimeoutException as error:
        code, message = failure_of(error)
        failed, attempt = {"error": JobError(code=code, message=message)}, run.get("attempt")
        attempt = int(attempt) if attempt is not None else None
        with contextlib.suppress(InvalidTransition):
            if attempt is not None:
                _retry_redis(lambda: store.finish_run(job_id, attempt, JobStatus.failed, **failed))
            else:
                _retry_redis(lambda: store.transition(job_id, JobStatus.failed, **failed))
        return {"job_id": job_id, "status": "failed"}


def _run_job(
    job_id: str, store: RecordStore, settings: SharedSettings, run: dict[str, int | float]
) -> dict[str, Any]:
    """One run of a queued job; ``run["attempt"]`` is set once this run owns the job.

    Every failure of the job itself ends it with a code; one at the time limit is the
    timeout, whatever error RQ's timeout turned into where it struck. RQ's shutdown
    (``ShutDownImminentException``, a BaseException) and the interpreter's own
    exits propagate: the record stays running and the reaper runs it again.
    """
    from rq.timeouts import JobTimeoutException

    record = store.get(job_id)
    if record is None or record.status != JobStatus.queued:
        why = "no record" if record is None else record.status.value
        log.info("job %s: nothing to run (%s)", job_id, why)
        return {"job_id": job_id, "ran": False}
    try:
        starting = Progress(phase="loading", fraction=0.0, message="starting")
        started = store.transition(
            job_id, JobStatus.running, started_at=record.started_at or utc_now(),
            attempts=record.attempts + 1, heartbeat_at=utc_now(), progress=starting,
            deadline_at=None,
        )
    except InvalidTransition:
        started = None
    if started is None:
        return {"job_id": job_id, "ran": False}
    attempt = run["attempt"] = started.attempts
    interval_s = settings.heartbeat_interval_s
    progress = JobProgress(store, job_id, interval_s=interval_s, attempt=attempt).start()
    status = JobStatus.failed
    fields: dict[str, Any] = {}
    output_uri = started.request["output_uri"]
    manifest: Manifest | None = None
    try:
        from worker.enqueue import queue_of
        from worker.shards import Sharding

        request = JobRequest.model_validate(started.request)
        _refuse_private_url(request.dataset_uri, settings)
        set_torch_threads(settings)
        sharding = Sharding(store, queue_of(store.redis, settings), job_id, attempt)
        manifest = execute_or_hand_over(
            request, output_uri, job_id=job_id, progress=progress, settings=settings,
            tenant=started.tenant, sharding=sharding,
        )
        if manifest is None:
            progress.stop()
            if progress.lost.is_set():
                return _lost(job_id, None, output_uri, settings, started.tenant)
            log.info("job %s: run %d goes on in its shard jobs", job_id, attempt)
            return {"job_id": job_id, "status": "sharded"}
        status = JobStatus.succeeded
        coreset, dataset = manifest.coreset, manifest.dataset
        result = JobResult(
            output_uri=manifest.output_uri, coreset_uri=coreset.uri,
            manifest_uri=manifest.manifest_uri, size=coreset.rows, clicks=coreset.clicks,
            data_rows=dataset.rows, data_clicks=dataset.clicks,
            phase_seconds=manifest.phase_seconds,
        )
        done = Progress(phase="writing", fraction=1.0, message="done")
        fields = {"result": result, "progress": done}
    except SelectionCancelled:
        status, fields = JobStatus.cancelled, {}
    except Exception as error:  # noqa: BLE001 - every failure of the job ends it with a code
        limit_s = settings.job_timeout_s
        late = time.monotonic() - run["begun"] >= limit_s - min(1.0, 0.1 * limit_s)
        code, message = failure_of(JobTimeoutException(str(error)) if late else error)
        trace = error if code == "internal_error" else None
        log.warning("job %s failed: %s: %s", job_id, code, message, exc_info=trace)
        status, fields = JobStatus.failed, {"error": JobError(code=code, message=message)}
    finally:
        progress.stop()
    if progress.lost.is_set():
        return _lost(job_id, manifest, output_uri, settings, started.tenant)
    # A cancel that stopped the run ends it cancelled; one that came once the manifest was
    # written is too late: the job has its result, and ends succeeded.
    stopped = status == JobStatus.cancelled or (
        status == JobStatus.failed and progress.cancelled.is_set()
    )
    current = _retry_redis(lambda: store.get(job_id)) if stopped else None
    if status == JobStatus.failed and current is not None and current.cancel_requested:
        status = JobStatus.cancelled
    if status == JobStatus.cancelled:
        fields = {"progress": cancelled_progress(current)}
    try:
        finished = _retry_redis(
            lambda: store.finish_run(job_id, attempt, status, heartbeat_at=utc_now(), **fields)
        )
        if finished is None:
            progress.mark_lost()
            return _lost(job_id, manifest, output_uri, settings, started.tenant)
        if status == JobStatus.succeeded and manifest is not None:
            add_phase_seconds(store, job_id, manifest.phase_seconds)
    except InvalidTransition as error:
        now = error.record
        log.warning(
            "job %s: run %d ended %s, but the job is now %s (attempt %s)",
            job_id, attempt, status.value, now.status.value, now.attempts,
        )
        status = error.record.status
    return {"job_id": job_id, "status": status.value}


def add_phase_seconds(store: RecordStore, job_id: str, seconds: dict[str, float]) -> None:
    """Count a succeeded job's phase times in /metrics; a failure there is logged, never the
    job's (it has its result)."""
    try:
        _retry_redis(lambda: store.add_phase_seconds(seconds), for_s=10.0)
    except redis.exceptions.RedisError as error:
        log.warning("job %s: its phase times are not in /metrics (%s)", job_id, error)


def _lost(
    job_id: str, manifest: Manifest | None, output_uri: str, settings: SharedSettings,
    tenant: str,
) -> dict[str, Any]:
    """The end of a run whose job record is gone: nobody can read its result, so what it
    wrote goes (an unfinished run has removed its files already: ``execute``)."""
    if manifest is not None:
        others = [name for name in manifest.files.values() if name != MANIFEST_FILE]
        files = [MANIFEST_FILE, *others]
        with contextlib.suppress(JobFailed), open_output(output_uri, settings, tenant) as folder:
            remove_result(folder, files)
    return {"job_id": job_id, "status": "lost"}


def set_torch_threads(settings: SharedSettings) -> None:
    """Run torch's CPU operations on ``settings.torch_threads`` threads (in the work horse)."""
    import torch

    if torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def _refuse_private_url(uri: str, settings: SharedSettings) -> None:
    """Check again, at run time, that an https:// dataset's host is public (its DNS may have
    changed since the API checked it)."""
    if settings.allow_private_urls or scheme_of(uri) not in ("http", "https"):
        return
    host = urlsplit(uri).hostname or ""
    try:
        address = private_address(host)
    except (OSError, UnicodeError):
        return
    if address is not None:
        raise JobFailed(
            "dataset_uri_refused",
            f"dataset_uri: the host {host!r} now resolves to a non-public address ({address}); "
            "refused (NACS_ALLOW_PRIVATE_URLS)",
        )


TIMED_OUT = "the job ran longer than the job timeout (NACS_JOB_TIMEOUT_S) and was stopped"


def failure_of(error: BaseException) -> tuple[str, str]:
    """The (code, message) a failed job shows for ``error``; never a stack trace."""
    from rq.timeouts import JobTimeoutException

    if isinstance(error, (JobFailed, DataError)):
        return error.code, error.message
    if first_cause(error, lambda cause: isinstance(cause, JobTimeoutException)) is not None:
        # Also a timeout that a library's own error handling turned into another exception.
        return "timeout", TIMED_OUT
    if isinstance(error, pydantic.ValidationError):
        return "invalid_request", f"the stored request is not valid: {error.errors()[0]['msg']}"
    if isinstance(error, MemoryError):
        advice = "use a larger worker or a smaller partition_size"
        return "out_of_memory", f"the worker ran out of memory; {advice}"
    if isinstance(error, ValueError):
        first_line = str(error).splitlines()[0] if str(error) else "the data cannot be used"
        return "invalid_data", first_line
    if _transient_cause(error) is not None:
        return "storage_unavailable", f"the store or network did not answer: {_short(error)}"
    name = type(error).__name__
    return "internal_error", f"the job stopped on an unexpected error ({name}); see the worker log"


def _retry_redis(call: Callable[[], T], *, for_s: float = 120.0) -> T:
    """Run a Redis call, waiting out a Redis restart for up to ``for_s`` seconds."""
    deadline = time.monotonic() + for_s
    wait_s = 0.2
    while True:
        try:
            return call()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, 5.0)
