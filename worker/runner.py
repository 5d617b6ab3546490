"""A worker process: an RQ worker on the job queue, plus the reaper of lost jobs.

By default RQ forks a work horse per job. The parent imports torch and the engine once
(``preload_engine``), so that a horse starts its work at once instead of importing them
(seconds per job, and a job spread over workers runs many short ones); it never runs a
torch operation or touches CUDA, which torch initialises in the horse at first use, so the
fork stays safe on GPU hosts. ``fork=False`` (RQ's SimpleWorker) runs jobs in the worker
process, for a GPU worker that keeps its CUDA context; a crashing job then takes the worker
with it (the reaper re-runs or fails the job)."""

from __future__ import annotations

import logging
import threading

from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from worker.enqueue import queue_of
from worker.reaper import reap
from worker.records import RecordStore, connect, persistence_problem
from worker.settings import SharedSettings

log = logging.getLogger(__name__)


def start_reaper(settings: SharedSettings, stop: threading.Event) -> threading.Thread:
    """A daemon thread that reaps (``worker.reaper.reap``) and removes the working folders
    killed runs left on this machine (``worker.tasks.sweep_workdirs``) every
    ``reaper_interval_s`` until ``stop`` is set."""
    from worker.tasks import sweep_workdirs

    def loop() -> None:
        connection = connect(settings.redis_url)
        store, queue = RecordStore(connection, settings), queue_of(connection, settings)
        while not stop.wait(settings.reaper_interval_s):
            try:
                for job_id, action in reap(store, queue):
                    log.warning("reaper: job %s %s", job_id, action)
                for folder in sweep_workdirs(store):
                    log.warning("reaper: removed %s, left by a run that was killed", folder)
            except Exception as error:  # noqa: BLE001 - the reaper must outlive Redis restarts
                log.warning("reaper: %s", error)
        connection.close()

    thread = threading.Thread(target=loop, name="nacs-reaper", daemon=True)
    thread.start()
    return thread


def preload_engine() -> None:
    """Import torch and the engine, and let torch load what its optimizers load on first use,
    without running any torch operation."""
    import torch

    import nacs_engine.audit  # noqa: F401
    import nacs_engine.nacs  # noqa: F401
    import nacs_engine.teacher  # noqa: F401

    torch.optim.Adam([torch.nn.Parameter(torch.empty(0))])


def run_worker(
    settings: SharedSettings | None = None, *, burst: bool = False, fork: bool = True,
    name: str | None = None, reaper: bool = True,
) -> bool:
    """Work jobs from the queue until stopped (or, with ``burst``, until the queue is empty).
    Returns whether it ran a job: RQ's answer, or False when a stop signal escapes RQ's loop
    (even if a job ran)."""
    import worker.shards  # noqa: F401 - loaded once here, so each forked horse starts at once
    import worker.tasks  # noqa: F401

    if fork:
        preload_engine()

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
    except StopRequested:
        # A stop signal that lands between two turns of RQ's loop leaves ``work`` (torn down
        # already) as this exception instead of ending the loop: the stop asked for.
        log.info("worker %s: stopped on request", rq_worker.name)
        return False
    finally:
        stop.set()
