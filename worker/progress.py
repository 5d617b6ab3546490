"""Progress of a running job: throttled writes to its record, heartbeats, cancel requests."""

from __future__ import annotations

import logging
import threading
import time

import redis

from nacs_engine.errors import SelectionCancelled
from worker.records import PHASES, JobRecord, JobStatus, Progress, RecordStore

log = logging.getLogger(__name__)


class JobProgress:
    """The ``progress(phase, fraction, message)`` callback of one running job.

    A background thread writes the job's heartbeat every ``interval_s`` and
    watches for a cancel request; the callback raises SelectionCancelled at its
    next call once one arrived, or once the job's record is gone (``lost``: Redis
    lost its data), which is logged as one error. Writes of the progress itself
    are throttled to one per ``min_write_interval_s`` (phase changes and
    completions always go through). Redis errors are tolerated, so a job keeps
    running while Redis restarts, and logged once when writes start failing and
    once when they succeed again, not at every call.
    """

    def __init__(
        self, store: RecordStore, job_id: str, *, interval_s: float, attempt: int | None = None,
        min_write_interval_s: float = 0.5,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.interval_s = interval_s
        self.min_write_interval_s = min_write_interval_s
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._failing = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_write = 0.0
        self._last_phase: str | None = None
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> JobProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def check(self) -> None:
        """Raise SelectionCancelled if the job was asked to stop."""
        if self.cancelled.is_set():
            raise SelectionCancelled(f"job {self.job_id} was cancelled")

    def __call__(self, phase: str, fraction: float, message: str) -> None:
        self.check()
        if phase not in PHASES:
            phase, message = self._last_phase or "selecting", f"{phase}: {message}"
        now = time.monotonic()
        recent = now - self._last_write < self.min_write_interval_s
        if phase == self._last_phase and fraction < 1.0 and recent:
            return
        fraction = round(min(max(float(fraction), 0.0), 1.0), 4)
        progress = Progress(phase=phase, fraction=fraction, message=message)  # type: ignore[arg-type]
        try:
            record = self.store.heartbeat(self.job_id, attempt=self.attempt, progress=progress)
        except redis.exceptions.RedisError as error:
            self._written(error)
            return
        self._written(None)
        self._last_write, self._last_phase = now, phase
        self._note(record)
        self.check()

    def mark_lost(self) -> None:
        """The job's record is gone: stop at the next call; log it, once."""
        self.cancelled.set()
        with self._lock:
            if self.lost.is_set():
                return
            self.lost.set()
        log.error(
            "job %s: its record is gone from Redis (restarted without persistence, or "
            "flushed); the job stops and removes what it wrote. Redis must persist: "
            "docs/DEPLOY.md", self.job_id,
        )

    def _note(self, record: JobRecord | None) -> None:
        """Stop at the next call when the job was cancelled, is gone, or belongs to another
        run now."""
        if record is None:
            self.mark_lost()
        elif (
            record.cancel_requested
            or record.status != JobStatus.running
            or (self.attempt is not None and record.attempts != self.attempt)
        ):
            self.cancelled.set()

    def _written(self, error: redis.exceptions.RedisError | None) -> None:
        """Log when writes of the progress and heartbeat start failing, and when they work
        again: once per change, however often they are tried."""
        with self._lock:
            failing = error is not None
            if failing == self._failing:
                return
            self._failing = failing
        if error is not None:
            log.warning(
                "job %s: progress and heartbeat not written, Redis does not answer (%s); "
                "the job goes on and tries again", self.job_id, error,
            )
        else:
            log.warning("job %s: progress and heartbeat written again", self.job_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                record = self.store.heartbeat(self.job_id, attempt=self.attempt)
            except redis.exceptions.RedisError as error:
                self._written(error)
                continue
            self._written(None)
            self._note(record)
