"""A worker process: an RQ worker on the job queue, plus the reaper of lost jobs.

By default RQ forks a work horse per job: the parent never imports torch, so the fork is
safe on GPU hosts. ``fork=False`` (RQ's SimpleWorker) runs jobs in the worker process, for a
GPU worker that keeps its CUDA context; a crashing job then takes the worker with it (the
reaper re-runs or fails the job)."""

from __future__ import annotations

import logging
import threading

from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from worker.enqueue import queue_of
from worker.reaper import reap
from worker.records import RecordStore, connect, persistence_problem
from worker.settings import SharedSettings

log = logging.getLogger(__name__)


def start_reaper(settings: SharedSettings, stop: threading.Event) -> threading.Thread:
    """A daemon thread that reaps (``worker.reaper.reap``) every ``reaper_interval_s`` until
    ``stop`` is set."""

    def loop() -> None:
        connection = connect(settings.redis_url)
        store, queue = RecordStore(connection, settings), queue_of(connection, settings)
        while not stop.wait(settings.reaper_interval_s):
            try:
                for job_id, action in reap(store, queue):
                    log.warning("reaper: job %s %s", job_id, action)
            except Exception as error:  # noqa: BLE001 - the reaper must outlive Redis restarts
                log.warning("reaper: %s", error)
        connection.close()

    thread = threading.Thread(target=loop, name="nacs-reaper", daemon=True)
    thread.start()
    return thread


def run_worker(
    settings: SharedSettings | None = None, *, burst: bool = False, fork: bool = True,
    name: str | None = None, reaper: bool = True,
) -> bool:
    """Work jobs from the queue until stopped (or, with ``burst``, until the queue is empty)."""
    import worker.shards  # noqa: F401 - loaded once here (no torch) so each forked horse starts at once
    import worker.tasks  # noqa: F401

    settings = settings or SharedSettings()
    connection = connect(settings.redis_url)
    problem = persistence_problem(connection)
    if problem is not None:
        log.warning("%s", problem)
    queue = queue_of(connection, settings)
    worker_class = Worker if fork else SimpleWorker
    rq_worker = worker_class([queue], connection=connection, serializer=JSONSerializer, name=name)
    stop = threading.Event()
    if reaper:
        start_reaper(settings, stop)
    try:
        return bool(rq_worker.work(burst=burst, logging_level="INFO", with_scheduler=False))
    finally:
        stop.set()
