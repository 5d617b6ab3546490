"""One job across many workers: the teacher's folds and the audit's models as RQ jobs.

A job of a teacher method (``nacs``, its ablations, ``denoised-random``) over more rows
than one shard (``shard_rows``, by default 1,048,576) runs in five rounds of RQ jobs, all
on the job's one queue, none of them waiting for another inside a worker:

1. **plan** (``worker.tasks.run_job``, the job's own RQ job): counts the values of every
   field (the vocabulary: one pass over the data), then encodes the data shard by shard
   into the job's scratch folder (``{storage}/.scratch/{job id}/``: ``shard-NNNNN.npy``,
   the labels, and ``plan.json`` last), records the run's shard jobs and enqueues them.
2. **folds** (``run_fold``, one RQ job per teacher fold): trains the fold's model on the
   other folds' rows and scores its own fold's rows out of sample, reading the shards;
   writes the model's weights and the logits (``fold-F.pt``).
3. **reduce** (``run_reduce``, an RQ job that depends on every fold job, so RQ enqueues it
   once they all finished): joins the folds into the teacher, estimates the noise and
   selects; writes the selection and the rows the audit's models read (the held-back rows,
   the coreset and the random subsets) to the scratch folder and enqueues the audit round.
   A job without an audit (``audit=false``, or data that cannot spare the rows) writes its
   result here.
4. **audit** (``run_audit_model``, one RQ job per model of the audit: families x seeds x
   coreset and random): trains the model and keeps its scores and logits (``audit-N.npz``).
5. **finish** (``run_finish``, depending on every audit job): concludes the audit (the
   guard's fallback included), writes coreset.parquet, the report and manifest.json exactly
   as a job run as one, then removes the scratch folder.

The plan depends only on the data and the options (the shard size, and the fold count,
which depends on the row count): the teacher's folds, the audit's models, their generators
and batches are those of the job run as one, and every job sets torch's thread count
(``NACS_TORCH_THREADS``; a fold or an audit model trains on the share of it that it gets
when the job run as one trains them at once, ``nacs_engine.runtime.one_lane_of``), so the
coreset and the audit are the same whichever worker runs which job, and the same as the
job run as one (``worker.tasks.execute``) with that thread count.

Faults: every file of the scratch folder appears whole (``worker.storage.write_bytes``),
and a fold or an audit model whose file exists is not trained again. A shard job lost with
its worker leaves the job's heartbeat to go stale (or its RQ job failed): the reaper runs
the job again (``worker.reaper``, at most ``NACS_MAX_ATTEMPTS`` runs), and the new run
reuses what the scratch holds. A shard job that fails fails the job with its name; a cancel
request stops the shard job that sees it, which cancels the others.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel
from rq import Queue, get_current_job
from rq.job import Dependency, Job
from rq.timeouts import JobTimeoutException

from nacs_engine.errors import SelectionCancelled
from worker.enqueue import queue_of, stop_rq_job
from worker.errors import JobFailed
from worker.progress import JobProgress
from worker.records import (
    InvalidTransition,
    JobError,
    JobRecord,
    JobResult,
    JobStatus,
    Progress,
    RecordStore,
    cancelled_progress,
    connect,
    parse_time,
    rfc3339,
    utc_now,
)
from worker.settings import SharedSettings
from worker.spec import JobRequest
from worker.storage import filesystem, join_uri, write_bytes

log = logging.getLogger(__name__)

SCRATCH_FOLDER = ".scratch"
PLAN_FILE = "plan.json"
LABELS_FILE = "labels.npy"
FOLD_TASK = "worker.shards.run_fold"
REDUCE_TASK = "worker.shards.run_reduce"
AUDIT_TASK = "worker.shards.run_audit_model"
FINISH_TASK = "worker.shards.run_finish"
SELECTION_FILE = "selection.npz"
HELD_FILE = "audit-held.npz"
STATE_FILE = "selection.json"
# Share of the selecting phase the folds take (the engine gives its teacher the same).
_FOLDS_SHARE = 0.9

ProgressCallback = Callable[[str, float, str], None]


class ShardPlan(BaseModel):
    """plan.json: what the plan job read and how it cut it; the shard jobs read it."""

    rows: int
    clicks: int
    shard_rows: int
    bounds: list[tuple[int, int]]
    teacher_folds: int
    field_names: list[str]
    field_dims: list[int]
    fingerprint: str
    # ``Encoder.fitted_digest`` of the fit the shards were encoded with; a later run of the
    # job reuses them only when its fit gives the same.
    encoding: str = ""
    metadata: dict[str, Any]
    loading_seconds: float
    shard_seconds: list[float]
    planned_at: float


def scratch_uri(settings: SharedSettings, job_id: str) -> str:
    """The job's scratch folder: in the store, outside every output folder."""
    return join_uri(settings.storage_uri, SCRATCH_FOLDER, job_id)


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.npy"


def fold_file(fold: int) -> str:
    return f"fold-{fold}.pt"


def _save_array(uri: str, array: np.ndarray, settings: SharedSettings) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(uri, buffer.getvalue(), settings)


def _load_array(uri: str, settings: SharedSettings) -> np.ndarray:
    fs, path = filesystem(uri, settings)
    with fs.open(path, "rb") as source:
        return np.load(source, allow_pickle=False)


def _exists(uri: str, settings: SharedSettings) -> bool:
    fs, path = filesystem(uri, settings)
    return bool(fs.exists(path))


def remove_scratch(settings: SharedSettings, job_id: str) -> None:
    """Remove the job's scratch folder, as far as the store allows (a failure is logged)."""
    uri = scratch_uri(settings, job_id)
    try:
        fs, path = filesystem(uri, settings)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception as error:  # noqa: BLE001 - what cannot be removed is left, and said
        log.warning("job %s: scratch %s not removed (%s)", job_id, uri, error)


class ShardedFeatures:
    """The (n, F) int32 features of a job, read shard by shard from its scratch folder.

    ``features[rows]`` (rows ascending or not) reads the shards that hold them; the two
    shards read last are kept, so that reading rows in ascending order in pieces reads each
    shard once, and the last few sets of at most ``REMEMBERED_ROWS`` rows read are kept, so
    that the audit, which reads the same rows for several models, reads each set once.
    """

    ndim = 2
    dtype = np.dtype(np.int32)
    REMEMBERED_ROWS = 1 << 20
    REMEMBERED_SETS = 6

    def __init__(
        self, load: Callable[[int], np.ndarray], bounds: list[tuple[int, int]], n_fields: int
    ) -> None:
        self._load = load
        self._starts = np.array([start for start, _ in bounds], dtype=np.int64)
        self.shape = (int(bounds[-1][1]) if bounds else 0, int(n_fields))
        self._kept: dict[int, np.ndarray] = {}
        self._remembered: dict[bytes, np.ndarray] = {}

    def _shard(self, index: int) -> np.ndarray:
        if index not in self._kept:
            if len(self._kept) >= 2:
                self._kept.pop(next(iter(self._kept)))
            self._kept[index] = self._load(index)
        return self._kept[index]

    def __getitem__(self, rows: Any) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(self.shape[0])[rows]
        rows = np.asarray(rows, dtype=np.int64)
        key = b""
        if rows.shape[0] <= self.REMEMBERED_ROWS:
            key = hashlib.blake2b(rows.tobytes(), digest_size=16).digest()
            if key in self._remembered:
                return self._remembered[key].copy()
        out = self._read(rows)
        if key:
            if len(self._remembered) >= self.REMEMBERED_SETS:
                self._remembered.pop(next(iter(self._remembered)))
            self._remembered[key] = out.copy()
        return out

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.shape[0], self.shape[1]), dtype=np.int32)  # (r, F)
        if rows.shape[0] == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows: expected positions in [0, {self.shape[0]})")
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for index in np.unique(shard_of):
            positions = np.flatnonzero(shard_of == index)
            out[positions] = self._shard(int(index))[rows[positions] - self._starts[index]]
        return out


class Sharding:
    """The plan job's side of a job spread over workers (``worker.tasks.execute`` calls it)."""

    def __init__(
        self, store: RecordStore, queue: Queue, job_id: str, attempt: int
    ) -> None:
        self.store = store
        self.queue = queue
        self.settings = store.settings
        self.job_id = job_id
        self.attempt = attempt
        # The run began as the plan job started: all its shard jobs end within the job timeout.
        self.deadline = time.time() + self.settings.job_timeout_s

    def shard_rows(self, config: Any) -> int | None:
        """Rows per shard of a job of ``config``; None when its method runs as one job."""
        from nacs_engine.data.shards import DEFAULT_SHARD_ROWS

        if not config.uses_teacher:
            return None
        return int(config.shard_rows or DEFAULT_SHARD_ROWS)

    def hand_over(
        self, source: Any, encoder: Any, config: Any, *, report: ProgressCallback,
        retried: Callable[[str, str, Callable[[], Any]], Any], workdir: str,
    ) -> None:
        """Encode ``source`` shard by shard into the scratch folder (unless a run of this job
        did it before), then record and enqueue the fold jobs and the reduce job."""
        settings = self.settings
        plan_uri = join_uri(scratch_uri(settings, self.job_id), PLAN_FILE)
        plan: ShardPlan | None = None
        encoding = encoder.fitted_digest()
        if retried("reading the scratch folder", "loading", lambda: _exists(plan_uri, settings)):
            raw = retried("reading the shard plan", "loading", lambda: _read(plan_uri, settings))
            plan = ShardPlan.model_validate_json(raw)
            if plan.encoding != encoding:  # the data changed since: start afresh
                remove_scratch(settings, self.job_id)
                plan = None
        if plan is None:
            plan = self._encode(source, encoder, config, report, retried, workdir, encoding)
            text = plan.model_dump_json().encode()
            retried(
                "writing the shard plan", "loading", lambda: write_bytes(plan_uri, text, settings)
            )
        report("loading", 1.0, f"{plan.rows} rows in {len(plan.bounds)} shards")
        self._enqueue(plan)

    def _encode(
        self, source: Any, encoder: Any, selection: Any, report: ProgressCallback,
        retried: Callable[[str, str, Callable[[], Any]], Any], workdir: str, encoding: str,
    ) -> ShardPlan:
        from nacs_engine.audit import selection_holdout
        from nacs_engine.data.shards import encode_shards
        from nacs_engine.errors import DataError
        from nacs_engine.pipeline import budget_error_code
        from nacs_engine.teacher import teacher_folds

        scratch = scratch_uri(self.settings, self.job_id)
        started = time.perf_counter()
        n_rows = int(encoder.fitted_rows)
        labels = np.empty(n_rows, dtype=np.float32)
        digests: list[str] = []
        seconds: list[float] = []
        metadata: dict[str, Any] = {}
        shard_started = time.perf_counter()
        shards = encode_shards(
            encoder, source, n_rows, workdir=workdir,
            progress=lambda part, text: report("loading", 0.5 + 0.5 * part, text),
        )
        for index, shard in enumerate(shards):
            start = index * source.shard_rows
            labels[start : start + shard.n_rows] = shard.labels
            features = np.ascontiguousarray(shard.features, dtype=np.int32)  # (rows, F)

            def write(
                uri: str = join_uri(scratch, shard_file(index)), array: np.ndarray = features
            ) -> None:
                _save_array(uri, array, self.settings)

            retried("writing a shard", "loading", write)
            digests.append(shard.fingerprint)
            metadata = metadata or dict(shard.metadata)
            del features, shard, write
            seconds.append(time.perf_counter() - shard_started)
            shard_started = time.perf_counter()
        uri = join_uri(scratch, LABELS_FILE)
        retried("writing the labels", "loading", lambda: _save_array(uri, labels, self.settings))
        try:
            k = selection.budget(n_rows)
        except ValueError as error:
            raise DataError(budget_error_code(selection, n_rows), str(error)) from None
        holdout = selection_holdout(labels, k, selection)
        candidates = n_rows if isinstance(holdout, str) else int(holdout.candidates.shape[0])
        clicks = int(labels.sum(dtype=np.float64))
        metadata.update(
            n_rows=n_rows, n_clicks=clicks, click_rate=clicks / max(n_rows, 1),
            unread_keys=source.unread_keys, unread_key_count=source.unread_key_count,
        )
        metadata.pop("oov_share", None)
        metadata.pop("storage", None)
        from nacs_engine.data.shards import shard_bounds

        return ShardPlan(
            rows=n_rows, clicks=clicks, shard_rows=source.shard_rows,
            bounds=shard_bounds(n_rows, source.shard_rows),
            teacher_folds=teacher_folds(candidates, selection),
            field_names=list(encoder.field_names), field_dims=[int(d) for d in encoder.field_dims],
            fingerprint=_combined(digests), encoding=encoding, metadata=metadata,
            loading_seconds=time.perf_counter() - started, shard_seconds=seconds,
            planned_at=time.time(),
        )

    def _enqueue(self, plan: ShardPlan) -> None:
        settings, job_id, attempt = self.settings, self.job_id, self.attempt
        folds = [f"{job_id}-{attempt}-fold-{fold}" for fold in range(plan.teacher_folds)]
        reduce_id = f"{job_id}-{attempt}-reduce"

        def change(record: JobRecord) -> None:
            if record.status != JobStatus.running or record.attempts != attempt:
                raise InvalidTransition(record)
            record.shard_jobs = [*folds, reduce_id]
            record.deadline_at = rfc3339(self.deadline)
            record.progress = Progress(
                phase="selecting", fraction=0.0,
                message=f"{plan.teacher_folds} teacher folds queued over {len(plan.bounds)} shards",
            )
            record.heartbeat_at = utc_now()

        # The record names the shard jobs before they exist: the reaper never sees a shard
        # job its record does not name.
        self.store.update(job_id, change)
        self.store.redis.delete(self.store.keys.shard_progress(job_id))
        # At most the time left to the run's deadline (RQ refuses a timeout of 0).
        ttl, timeout_s = settings.job_ttl_s, max(1, seconds_left(self.deadline))
        enqueued: list[Job | Dependency | str] = [
            self.queue.enqueue_call(
                FOLD_TASK, args=(job_id, settings.redis_prefix, attempt, fold), job_id=rq_id,
                description=f"nacs job {job_id}: teacher fold {fold}", timeout=timeout_s,
                result_ttl=ttl, failure_ttl=ttl, ttl=ttl,
            )
            for fold, rq_id in enumerate(folds)
        ]
        # RQ enqueues the reduce once every fold job finished; no worker waits for it.
        self.queue.enqueue_call(
            REDUCE_TASK, args=(job_id, settings.redis_prefix, attempt), job_id=reduce_id,
            depends_on=enqueued, description=f"nacs job {job_id}: reduce", timeout=timeout_s,
            result_ttl=ttl, failure_ttl=ttl, ttl=ttl,
        )


def _read(uri: str, settings: SharedSettings) -> bytes:
    from worker.storage import read_bytes

    return read_bytes(uri, settings)


def _combined(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


# -- the shard jobs ------------------------------------------------------------------------


class _Run:
    """What a shard job has: its settings, the record store, the job's record as it started,
    its progress callback and its scratch folder."""

    def __init__(
        self, settings: SharedSettings, store: RecordStore, record: JobRecord,
        progress: JobProgress, attempt: int,
    ) -> None:
        self.settings = settings
        self.store = store
        self.record = record
        self.progress = progress
        self.attempt = attempt
        self.scratch = scratch_uri(settings, record.id)

    def plan(self) -> ShardPlan:
        raw = _read(join_uri(self.scratch, PLAN_FILE), self.settings)
        return ShardPlan.model_validate_json(raw)

    def labels(self) -> np.ndarray:
        return _load_array(join_uri(self.scratch, LABELS_FILE), self.settings)

    def features(self, plan: ShardPlan) -> ShardedFeatures:
        def load(index: int) -> np.ndarray:
            return _load_array(join_uri(self.scratch, shard_file(index)), self.settings)

        return ShardedFeatures(load, plan.bounds, len(plan.field_names))


def _shard_job(
    kind: str, name: str, job_id: str, prefix: str | None, attempt: int,
    work: Callable[[_Run], dict[str, Any] | None],
) -> dict[str, Any]:
    """Run ``work`` as a shard job of run ``attempt`` of the job: nothing when the job is no
    longer that run's; a failure or a cancel ends the job (and stops its other shard jobs)."""
    from worker.tasks import failure_of, set_torch_threads

    settings = SharedSettings()
    if prefix is not None and prefix != settings.redis_prefix:
        settings = settings.model_copy(update={"redis_prefix": prefix})
    store = RecordStore(connect(settings.redis_url), settings)
    record = store.get(job_id)
    if record is None or record.status != JobStatus.running or record.attempts != attempt:
        why = "no record" if record is None else f"{record.status.value}, run {record.attempts}"
        log.info("job %s: %s of run %d has nothing to do (%s)", job_id, name, attempt, why)
        return {"job_id": job_id, "shard": name, "ran": False}
    # The run is alive from the first moment: the job's heartbeat does not wait for torch.
    store.heartbeat(job_id, attempt=attempt)
    set_torch_threads(settings)
    progress = JobProgress(store, job_id, interval_s=settings.heartbeat_interval_s, attempt=attempt)
    run = _Run(settings, store, record, progress, attempt)
    outcome, error = "succeeded", None
    progress.start()
    try:
        progress.check()
        if record.cancel_requested:
            raise SelectionCancelled(f"job {job_id} was cancelled")
        if run_seconds_left(record, settings) <= 0:
            raise JobTimeoutException(f"job {job_id}: past its deadline {record.deadline_at}")
        work(run)
    except SelectionCancelled:
        outcome = "cancelled"
    except Exception as failure:  # noqa: BLE001 - every failure ends the job with a code
        outcome = "failed"
        # past the run's deadline, whatever stopped the work (a library may wrap RQ's alarm)
        late = record.deadline_at is not None and run_seconds_left(record, settings) <= 0
        code, message = failure_of(JobTimeoutException(str(failure)) if late else failure)
        trace = failure if code == "internal_error" else None
        log.warning("job %s: %s failed: %s: %s", job_id, name, code, message, exc_info=trace)
        error = JobError(code=code, message=f"{name}: {message}")
    finally:
        progress.stop()
    with contextlib.suppress(Exception):
        store.count_shard_job(kind, outcome)
    if progress.lost.is_set():
        remove_scratch(settings, job_id)
        return {"job_id": job_id, "shard": name, "status": "lost"}
    if outcome == "succeeded":
        return {"job_id": job_id, "shard": name, "status": outcome}
    current = store.get(job_id)
    if current is None or current.attempts != attempt or current.status != JobStatus.running:
        return {"job_id": job_id, "shard": name, "status": "superseded"}
    if outcome == "cancelled" and not current.cancel_requested:
        return {"job_id": job_id, "shard": name, "status": "superseded"}
    status = JobStatus.cancelled if outcome == "cancelled" else JobStatus.failed
    running = get_current_job()
    end_sharded_run(
        store, job_id, attempt, status, error, this_job=running.id if running else None
    )
    return {"job_id": job_id, "shard": name, "status": outcome}


def seconds_left(deadline: float) -> int:
    """Whole seconds from now to ``deadline`` (seconds since the epoch), at least 0."""
    return max(0, math.ceil(deadline - time.time()))


def run_seconds_left(record: JobRecord, settings: SharedSettings) -> int:
    """The seconds a shard job of ``record``'s run may still take: to the run's deadline, or
    the whole job timeout for a run recorded without one (by an earlier version)."""
    deadline = parse_time(record.deadline_at)
    return settings.job_timeout_s if deadline is None else seconds_left(deadline)


def end_sharded_run(
    store: RecordStore, job_id: str, attempt: int, status: JobStatus, error: JobError | None,
    *, this_job: str | None = None,
) -> None:
    """End run ``attempt`` of a spread job ``failed`` or ``cancelled``: stop its shard jobs
    but ``this_job`` (the RQ job calling, which ends by itself), remove its scratch folder
    and its shards' progress."""
    fields: dict[str, Any] = {"heartbeat_at": utc_now()}
    if error is not None:
        fields["error"] = error
    if status == JobStatus.cancelled:
        fields["progress"] = cancelled_progress(store.get(job_id))
    try:
        ended = store.finish_run(job_id, attempt, status, **fields)
    except InvalidTransition:
        return
    if ended is not None:
        stop_shard_jobs(store, ended, skip=this_job)
    store.redis.delete(store.keys.shard_progress(job_id))
    remove_scratch(store.settings, job_id)


def stop_shard_jobs(store: RecordStore, record: JobRecord, *, skip: str | None = None) -> None:
    """Stop every shard job of ``record`` but ``skip`` that has not ended: a running one's
    work horse, a queued or waiting one taken off."""
    for rq_job_id in record.shard_jobs:
        if rq_job_id == skip:
            continue  # stopping it would kill the work horse running this loop
        with contextlib.suppress(Exception):
            stop_rq_job(store.redis, rq_job_id)


def run_fold(job_id: str, prefix: str | None, attempt: int, fold: int) -> dict[str, Any]:
    """RQ task: train teacher fold ``fold`` of run ``attempt`` of the job, and keep its model
    and out-of-fold logits in the scratch folder."""
    name = f"teacher fold {fold}"
    return _shard_job("fold", name, job_id, prefix, attempt, lambda run: _fold(run, fold))


def _fold(run: _Run, fold: int) -> None:
    import torch

    from nacs_engine.audit import selection_holdout
    from nacs_engine.runtime import one_lane_of, resolve_device
    from nacs_engine.teacher import fold_assignment, train_fold

    uri = join_uri(run.scratch, fold_file(fold))
    key = run.store.keys.shard_progress(run.record.id)
    if _exists(uri, run.settings):
        # An earlier run of the job trained this fold: the same plan, the same fold.
        run.store.redis.hset(key, str(fold), "1")
        return
    started = time.perf_counter()
    plan = run.plan()
    labels = run.labels()
    config = JobRequest.model_validate(run.record.request).to_config()
    holdout = selection_holdout(labels, config.budget(plan.rows), config)
    rows = np.arange(plan.rows, dtype=np.int64) if isinstance(holdout, str) else holdout.candidates
    folds = fold_assignment(int(rows.shape[0]), config)

    def report(fraction: float, message: str) -> None:
        run.store.redis.hset(key, str(fold), f"{fraction:.4f}")
        run.store.redis.expire(key, run.settings.job_ttl_s)
        done = sum(float(value) for value in run.store.redis.hvals(key)) / plan.teacher_folds
        run.progress("selecting", _FOLDS_SHARE * done, message)

    device = resolve_device(config.device)
    # on the threads this fold gets when one job trains the folds at once: the same logits
    with one_lane_of(device, plan.teacher_folds):
        result = train_fold(
            run.features(plan), labels, rows, folds, fold, tuple(plan.field_dims), config,
            device=device, progress=report,
        )
    state = {name: tensor.cpu() for name, tensor in result.model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(
        {
            "state": state, "logits": torch.from_numpy(result.logits), "epochs": result.epochs,
            "validation_score": result.validation_score, "seconds": time.perf_counter() - started,
            "best_epoch": result.best_epoch,
            "host": platform.node(),
        },
        buffer,
    )
    write_bytes(uri, buffer.getvalue(), run.settings)


def run_reduce(job_id: str, prefix: str | None, attempt: int) -> dict[str, Any]:
    """RQ task: join the folds into the teacher and select for run ``attempt`` of the job
    (enqueued by RQ once every fold job finished); then enqueue the audit's jobs, or write
    the result of a job without an audit."""
    return _shard_job("reduce", "reduce", job_id, prefix, attempt, _reduce)


def _reduce(run: _Run) -> None:
    import torch

    from nacs_engine.models.registry import build_model
    from nacs_engine.pipeline import select_coreset
    from nacs_engine.runtime import resolve_device
    from nacs_engine.selection import release_workspace
    from nacs_engine.teacher import (
        FoldResult,
        TeacherCache,
        assemble_teacher,
        fold_assignment,
        fold_max_epochs,
    )
    from worker.tasks import write_result

    started = time.perf_counter()
    job = _JobData(run)
    plan, labels, config, data = job.plan, job.labels, job.config, job.data
    device = resolve_device(config.device)
    rows = job.candidates()
    folds = fold_assignment(int(rows.shape[0]), config)
    results: list[FoldResult] = []
    jobs: list[dict[str, Any]] = [
        {"job": "plan", "seconds": round(plan.loading_seconds, 4)},
    ]
    for fold in range(plan.teacher_folds):
        raw = _read(join_uri(run.scratch, fold_file(fold)), run.settings)
        saved = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        model = build_model(
            config.backbone, tuple(plan.field_dims), embed_dim=config.embed_dim,
            dropout=config.dropout,
        )
        model.load_state_dict(saved["state"])
        model.to(device).eval()
        results.append(
            FoldResult(
                fold=fold, model=model, logits=saved["logits"].numpy(), epochs=int(saved["epochs"]),
                validation_score=float(saved["validation_score"]), seconds=float(saved["seconds"]),
                # a fold file of an earlier version: its best epoch is not known (0)
                best_epoch=int(saved.get("best_epoch", 0)),
                max_epochs=fold_max_epochs(config, int((folds != fold).sum())),
            )
        )
        jobs.append(
            {"job": f"teacher fold {fold}", "seconds": round(float(saved["seconds"]), 4),
             "host": str(saved["host"])}
        )
    teacher = assemble_teacher(
        rows, folds, labels, results, seconds=sum(result.seconds for result in results)
    )
    cache = TeacherCache()
    cache.put(data.features, labels, rows, data.field_dims, config, teacher)
    teacher_wall_s = max(0.0, time.time() - plan.planned_at - (time.perf_counter() - started))

    def report(phase: str, fraction: float, message: str) -> None:
        # The folds took the selecting phase to their share; the teacher is ready here.
        if phase == "selecting":
            fraction = max(fraction, _FOLDS_SHARE)
        run.progress(phase, fraction, message)

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(release_workspace)
        result = select_coreset(
            data, config, progress=report, teacher_cache=cache, defer_audit=True
        )
        jobs.append(
            {"job": "reduce", "seconds": round(time.perf_counter() - started, 4),
             "host": platform.node()}
        )
        if "audit" not in result.diagnostics:
            _hand_over_audit(run, job, result, jobs, teacher_wall_s)
            return
        manifest = write_result(
            job.request, config, data, result, run.record.request["output_uri"],
            job_id=run.record.id, report=report, settings=run.settings,
            tenant=run.record.tenant, phase_seconds={"loading": plan.loading_seconds},
            cleanup=cleanup, shards=lambda: job.shards_entry(jobs),
            teacher_seconds=teacher_wall_s,
        )
        _succeed(run, manifest)


class _JobData:
    """What every job after the folds reads: the plan, the labels, the request and its
    options, and the data over the shards."""

    def __init__(self, run: _Run) -> None:
        from nacs_engine.data.dataset import EncodedDataset

        self.plan = plan = run.plan()
        self.labels = run.labels()
        self.request = JobRequest.model_validate(run.record.request)
        self.config = self.request.to_config()
        self.data = EncodedDataset(
            features=run.features(plan),  # type: ignore[arg-type]
            labels=self.labels, field_names=tuple(plan.field_names),
            field_dims=tuple(plan.field_dims), fingerprint=plan.fingerprint,
            metadata=plan.metadata,
        )

    @functools.cached_property
    def holdout(self) -> Any:
        from nacs_engine.audit import selection_holdout

        return selection_holdout(self.labels, self.config.budget(self.plan.rows), self.config)

    def candidates(self) -> np.ndarray:
        holdout = self.holdout
        if isinstance(holdout, str):
            return np.arange(self.plan.rows, dtype=np.int64)
        return np.asarray(holdout.candidates)

    def shards_entry(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        plan = self.plan
        return {
            "rows_per_shard": plan.shard_rows,
            "count": len(plan.bounds),
            "bounds": [list(bound) for bound in plan.bounds],
            "teacher_folds": plan.teacher_folds,
            "shard_encoding_seconds": [round(s, 4) for s in plan.shard_seconds],
            "jobs": jobs,
        }


def _save_arrays(uri: str, settings: SharedSettings, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    write_bytes(uri, buffer.getvalue(), settings)


def _load_arrays(uri: str, settings: SharedSettings) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(_read(uri, settings)), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _hand_over_audit(
    run: _Run, job: _JobData, result: Any, jobs: list[dict[str, Any]], teacher_seconds: float
) -> None:
    """Keep the selection and the rows the audit's models read in the scratch folder, then
    enqueue one RQ job per model of the audit and the finish, which depends on them."""
    import json

    from nacs_engine.audit import audit_arms, audit_models, longest_first

    holdout = job.holdout
    settings, scratch, data = run.settings, run.scratch, job.data
    _save_arrays(
        join_uri(scratch, SELECTION_FILE), settings, rows=result.rows, labels=result.labels,
        soft_labels=result.soft_labels, weights=result.weights, uncertainty=result.uncertainty,
    )
    arms = audit_arms(job.labels, holdout, result, job.config)
    named = {"coreset": arms.coreset} | {
        _arm_name("random", seed): arm for seed, arm in enumerate(arms.randoms)
    }
    # One pass over the shards for every row the audit reads.
    wanted = np.unique(
        np.concatenate([holdout.stop, holdout.score, *(arm.rows for arm in named.values())])
    )
    features = data.features[wanted]  # (rows, F)

    def rows_of(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"features": features[np.searchsorted(wanted, rows)], "labels": job.labels[rows]}

    stop, score = rows_of(holdout.stop), rows_of(holdout.score)
    _save_arrays(
        join_uri(scratch, HELD_FILE), settings, stop_features=stop["features"],
        stop_labels=stop["labels"], score_features=score["features"],
        score_labels=score["labels"],
    )
    for name, arm in named.items():
        extra = {} if arm.weights is None else {"weights": arm.weights}
        _save_arrays(
            join_uri(scratch, arm_file(name)), settings, **rows_of(arm.rows),
            targets=arm.targets, **extra,
        )
    state = {
        "diagnostics": result.diagnostics, "jobs": jobs, "teacher_seconds": teacher_seconds,
        "audit_started": time.time(),
    }
    write_bytes(join_uri(scratch, STATE_FILE), json.dumps(state).encode(), settings)

    job_id, attempt = run.record.id, run.attempt
    models = audit_models(job.config)
    audit_ids = [f"{job_id}-{attempt}-audit-{index}" for index in range(len(models))]
    finish_id = f"{job_id}-{attempt}-finish"

    def change(record: JobRecord) -> None:
        if record.status != JobStatus.running or record.attempts != attempt:
            raise InvalidTransition(record)
        record.shard_jobs = [*record.shard_jobs, *audit_ids, finish_id]
        record.heartbeat_at = utc_now()

    # As for the folds: the record names the jobs before they exist.
    run.store.update(job_id, change)
    run.store.redis.delete(run.store.keys.shard_progress(job_id))
    queue = queue_of(run.store.redis, settings)
    ttl, timeout_s = settings.job_ttl_s, max(1, run_seconds_left(run.record, settings))
    # The longest first, so that the workers end the round together.
    order = longest_first(models)
    enqueued: list[Job | Dependency | str] = [
        queue.enqueue_call(
            AUDIT_TASK, args=(job_id, settings.redis_prefix, attempt, index),
            job_id=audit_ids[index], description=f"nacs job {job_id}: audit, {models[index]}",
            timeout=timeout_s, result_ttl=ttl, failure_ttl=ttl, ttl=ttl,
        )
        for index in order
    ]
    queue.enqueue_call(
        FINISH_TASK, args=(job_id, settings.redis_prefix, attempt), job_id=finish_id,
        depends_on=enqueued, description=f"nacs job {job_id}: finish", timeout=timeout_s,
        result_ttl=ttl, failure_ttl=ttl, ttl=ttl,
    )
    run.progress("auditing", 0.0, f"{len(models)} audit models queued")


def _arm_name(arm: str, seed: int) -> str:
    """The name of an audit model's arm in the scratch folder: the coreset is shared by the
    seeds, each seed has a random subset of its own."""
    return arm if arm == "coreset" else f"{arm}-{seed}"


def arm_file(name: str) -> str:
    return f"audit-arm-{name}.npz"


def audit_score_file(index: int) -> str:
    return f"audit-{index}.npz"


def run_audit_model(job_id: str, prefix: str | None, attempt: int, index: int) -> dict[str, Any]:
    """RQ task: train model ``index`` of the audit of run ``attempt`` of the job and keep its
    scores in the scratch folder."""
    return _shard_job(
        "audit", f"audit model {index}", job_id, prefix, attempt,
        lambda run: _audit_model(run, index),
    )


def _audit_model(run: _Run, index: int) -> None:
    from nacs_engine.audit import Arm, Held, audit_models, train_audit_model
    from nacs_engine.data.dataset import EncodedDataset
    from nacs_engine.runtime import one_lane_of, resolve_device

    uri = join_uri(run.scratch, audit_score_file(index))
    key = run.store.keys.shard_progress(run.record.id)
    config = JobRequest.model_validate(run.record.request).to_config()
    models = audit_models(config)
    if _exists(uri, run.settings):
        run.store.redis.hset(key, str(index), "1")
        return
    started = time.perf_counter()
    model = models[index]
    plan = run.plan()

    def dataset(features: np.ndarray, labels: np.ndarray) -> EncodedDataset:
        return EncodedDataset(
            features=features, labels=labels, field_names=tuple(plan.field_names),
            field_dims=tuple(plan.field_dims),
        )

    held_arrays = _load_arrays(join_uri(run.scratch, HELD_FILE), run.settings)
    held = Held(
        dataset(held_arrays["stop_features"], held_arrays["stop_labels"]),
        dataset(held_arrays["score_features"], held_arrays["score_labels"]),
    )
    arrays = _load_arrays(
        join_uri(run.scratch, arm_file(_arm_name(model.arm, model.seed))), run.settings
    )
    rows = np.arange(arrays["labels"].shape[0], dtype=np.int64)
    arm = Arm(rows, arrays["targets"], arrays.get("weights"))

    def report(phase: str, fraction: float, message: str) -> None:
        done = sum(float(value) for value in run.store.redis.hvals(key)) / len(models)
        run.progress("auditing", done, message)

    with one_lane_of(resolve_device(config.device), len(models)):
        score = train_audit_model(
            dataset(arrays["features"], arrays["labels"]), held, arm, model, config, report, 0.0
        )
    _save_arrays(
        uri, run.settings, auc=np.float64(score.auc), log_loss=np.float64(score.log_loss),
        logits=score.logits, seconds=np.float64(time.perf_counter() - started),
        host=np.str_(platform.node()),
    )
    run.store.redis.hset(key, str(index), "1")
    run.store.redis.expire(key, run.settings.job_ttl_s)


def run_finish(job_id: str, prefix: str | None, attempt: int) -> dict[str, Any]:
    """RQ task: conclude the audit from its models' scores and write the result of run
    ``attempt`` of the job (enqueued by RQ once every audit job finished)."""
    return _shard_job("finish", "finish", job_id, prefix, attempt, _finish)


def _finish(run: _Run) -> None:
    import json

    from nacs_engine.audit import AuditScore, Scores, audit_arms, audit_models, conclude_audit
    from nacs_engine.pipeline import CoresetResult, with_audit
    from nacs_engine.selection import release_workspace
    from worker.tasks import write_result

    started = time.perf_counter()
    job = _JobData(run)
    config, holdout = job.config, job.holdout
    state = json.loads(_read(join_uri(run.scratch, STATE_FILE), run.settings))
    arrays = _load_arrays(join_uri(run.scratch, SELECTION_FILE), run.settings)
    result = CoresetResult(
        rows=arrays["rows"], labels=arrays["labels"], soft_labels=arrays["soft_labels"],
        weights=arrays["weights"], uncertainty=arrays["uncertainty"],
        diagnostics=state["diagnostics"],
    )
    jobs: list[dict[str, Any]] = list(state["jobs"])
    scores: Scores = {}
    for index, model in enumerate(audit_models(config)):
        saved = _load_arrays(join_uri(run.scratch, audit_score_file(index)), run.settings)
        scores[model] = AuditScore(float(saved["auc"]), float(saved["log_loss"]), saved["logits"])
        jobs.append(
            {"job": f"audit: {model}", "seconds": round(float(saved["seconds"]), 4),
             "host": str(saved["host"])}
        )
    delivered, audit = conclude_audit(
        job.data, holdout, result, config, audit_arms(job.labels, holdout, result, config),
        scores, seconds=max(0.0, time.time() - float(state["audit_started"])),
        report=run.progress,
    )

    def finished_jobs() -> dict[str, Any]:
        finish = {"job": "finish", "seconds": round(time.perf_counter() - started, 4),
                  "host": platform.node()}
        return job.shards_entry([*jobs, finish])

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(release_workspace)
        manifest = write_result(
            job.request, config, job.data, with_audit(delivered, audit),
            run.record.request["output_uri"], job_id=run.record.id, report=run.progress,
            settings=run.settings, tenant=run.record.tenant,
            phase_seconds={"loading": job.plan.loading_seconds}, cleanup=cleanup,
            shards=finished_jobs, teacher_seconds=float(state["teacher_seconds"]),
        )
        _succeed(run, manifest)


def _succeed(run: _Run, manifest: Any) -> None:
    """End the run ``succeeded`` with the manifest's result; remove the scratch folder."""
    from worker.tasks import _retry_redis, add_phase_seconds

    coreset, dataset = manifest.coreset, manifest.dataset
    result = JobResult(
        output_uri=manifest.output_uri, coreset_uri=coreset.uri,
        manifest_uri=manifest.manifest_uri, size=coreset.rows, clicks=coreset.clicks,
        data_rows=dataset.rows, data_clicks=dataset.clicks, phase_seconds=manifest.phase_seconds,
    )
    done = Progress(phase="writing", fraction=1.0, message="done")
    finished = _retry_redis(
        lambda: run.store.finish_run(
            run.record.id, run.attempt, JobStatus.succeeded, heartbeat_at=utc_now(),
            result=result, progress=done,
        )
    )
    if finished is None:
        raise JobFailed("internal_error", "the job's record is gone")
    add_phase_seconds(run.store, run.record.id, manifest.phase_seconds)
    run.store.redis.delete(run.store.keys.shard_progress(run.record.id))
    remove_scratch(run.settings, run.record.id)


