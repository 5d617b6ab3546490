"""Where the engine runs and where its randomness comes from.

The device is chosen at run time from the configuration ("auto", "cpu", "cuda",
"cuda:N"); nothing in the engine names a device otherwise. Every random draw
comes from a generator derived from the job's seed: one numpy ``Generator`` or
torch ``Generator`` per purpose ("stream"), so that adding a draw in one place
does not shift the draws made elsewhere.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

import numpy as np
import torch

from nacs_engine.errors import SelectionCancelled

T = TypeVar("T")

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Named streams: each purpose draws from its own generator.
STREAMS: dict[str, int] = {
    "model_init": 1,
    "warmup": 2,
    "partitions": 3,
    "greedy": 4,
    "training": 5,
    "dropout": 6,
    "evaluation": 7,
    "split": 8,
    "teacher_folds": 9,
    "teacher_init": 10,
    "teacher_dropout": 11,
    "teacher_batches": 12,
    "teacher_validation": 13,
    "selection": 14,
    "facility_location": 15,
    "audit": 16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".

    Raises ValueError naming ``device`` when it is malformed or names a CUDA
    device this machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but no CUDA device is available")
    resolved = torch.device(device)
    index = resolved.index if resolved.index is not None else 0
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device: {device!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return resolved


# Held by the thread inside a ``seeded_scope``: the scopes seed and restore torch's global
# generators, which all threads share (re-entrant: scopes nest).
_GLOBAL_GENERATORS = threading.RLock()


def _stream_seed(seed: int, stream: str, index: int | None = None) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if stream not in STREAMS:
        raise ValueError(f"stream: expected one of {', '.join(STREAMS)}, got {stream!r}")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise ValueError(f"index: expected a non-negative integer, got {index!r}")
    key = (STREAMS[stream],) if index is None else (STREAMS[stream], index)
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=key)
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def numpy_generator(seed: int, stream: str, index: int | None = None) -> np.random.Generator:
    """A numpy generator for one purpose (and one ``index`` of it), derived from ``seed``."""
    return np.random.default_rng(_stream_seed(seed, stream, index))


def torch_generator(
    seed: int, stream: str, device: torch.device | str = "cpu", index: int | None = None
) -> torch.Generator:
    """A torch generator for one purpose (and one ``index`` of it), derived from ``seed``, on ``device``."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(_stream_seed(seed, stream, index))
    return generator


@contextlib.contextmanager
def seeded_scope(
    seed: int, stream: str, device: torch.device, index: int | None = None
) -> Iterator[None]:
    """Seed torch's global generators for a block and restore them afterwards.

    Some draws cannot take a generator (parameter initialisation, dropout
    masks); inside this scope they come from ``seed`` too, and the caller's
    global random state is left as it was. One thread at a time holds a scope
    (others wait), so that models built at once in threads draw their own numbers.
    """
    devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    with _GLOBAL_GENERATORS, torch.random.fork_rng(devices=devices):
        stream_seed = _stream_seed(seed, stream, index)
        torch.default_generator.manual_seed(stream_seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(stream_seed)
        yield


class SharedProgress:
    """Progress calls from models trained at once in threads: one thread at a time calls,
    and once a call has raised (a cancel request raises there) the others raise at their
    next call, so that they stop at their next report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        # the error that stopped the others (theirs only say that they stopped)
        self.failure: BaseException | None = None

    def call(self, report: Callable[[], None]) -> None:
        with self._lock:
            if self.stopped.is_set():
                raise SelectionCancelled("stopped: another model trained at once failed")
            try:
                report()
            except BaseException as error:
                self.failure = error
                self.stopped.set()
                raise


def cpu_lanes(device: torch.device, tasks: int) -> int:
    """How many models to train at once on ``device``: on a CPU, one per torch thread (at
    most ``tasks``); elsewhere, or with one thread, 1 (one after the other)."""
    if device.type != "cpu":
        return 1
    return max(1, min(tasks, torch.get_num_threads()))


@contextlib.contextmanager
def one_lane_of(device: torch.device, tasks: int) -> Iterator[None]:
    """Run a block on the torch threads that ``train_at_once`` gives each lane of ``tasks``
    models on ``device`` (all of them where the models train one after the other): a model
    trained alone, as a job of its own, then gives what it gives among the others."""
    with _lane_threads(cpu_lanes(device, tasks)):
        yield


@contextlib.contextmanager
def one_thread_each(device: torch.device) -> Iterator[None]:
    """Run a block with torch's CPU operations on one thread (on a CPU; elsewhere as they
    are), then restore the thread count: for models trained at once in threads, one each."""
    if device.type != "cpu":
        yield
        return
    with _torch_threads(1):
        yield


def _lane_threads(lanes: int) -> contextlib.AbstractContextManager[None]:
    """Run a block on one lane's share of torch's threads (at least one), then restore them."""
    return _torch_threads(max(1, torch.get_num_threads() // lanes))


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run a block on ``count`` torch threads, then restore their number."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_at_once(
    jobs: Sequence[Callable[[], T]],
    lanes: int,
    shared: SharedProgress,
    on_result: Callable[[int, T], None] | None = None,
) -> list[T]:
    """The results of ``jobs``, run at once in ``lanes`` threads that share torch's threads
    (with two threads and two lanes, one each: small models keep a core busy each, where two
    threads on one gain little; with sixteen and two lanes, eight each). The first failure
    stops the rest (pending ones are not started, running ones stop at their next ``shared``
    report) and is raised. Each job must draw from its own generators: then the results are
    those of running the jobs one after the other on a lane's number of torch threads. With
    one lane they run one after the other here, on torch's threads as they are.
    ``on_result(index, result)`` is called in this thread as each job ends (those that end
    together in the order of ``jobs``); an exception it raises stops the rest too."""
    report = on_result or (lambda index, result: None)
    if lanes < 2:
        results = []
        for index, job in enumerate(jobs):
            results.append(job())
            report(index, results[-1])
        return results
    with (
        _lane_threads(lanes),
        ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="model") as pool,
    ):
        futures = [pool.submit(job) for job in jobs]
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for index in sorted(futures.index(future) for future in finished):
                    error = futures[index].exception()
                    if error is not None:
                        raise shared.failure or error
                    report(index, futures[index].result())
        except BaseException:
            shared.stopped.set()
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]
