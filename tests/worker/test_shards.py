"""The features of a job spread over workers, read from its shards."""

from __future__ import annotations

import numpy as np
import pytest

from worker.shards import ShardedFeatures, ShardPlan


def test_rows_read_from_shards_equal_the_whole_array() -> None:
    whole = np.random.default_rng(0).integers(0, 1000, (1000, 5)).astype(np.int32)
    bounds = [(0, 300), (300, 600), (600, 900), (900, 1000)]
    loads: list[int] = []

    def load(index: int) -> np.ndarray:
        loads.append(index)
        start, stop = bounds[index]
        return whole[start:stop].copy()

    features = ShardedFeatures(load, bounds, 5)
    assert features.shape == (1000, 5) and features.ndim == 2
    rows = np.array([999, 0, 450, 301, 299, 600])
    np.testing.assert_array_equal(features[rows], whole[rows])
    np.testing.assert_array_equal(features[10:20], whole[10:20])
    assert features[np.array([], dtype=np.int64)].shape == (0, 5)
    loads.clear()
    for start in range(0, 1000, 128):  # ascending pieces read each shard once
        piece = np.arange(start, min(1000, start + 128))
        np.testing.assert_array_equal(features[piece], whole[piece])
    assert len(loads) == len(set(loads)), "no shard read twice"
    features[rows]
    loads.clear()
    again = features[rows]  # a set just read is kept
    np.testing.assert_array_equal(again, whole[rows])
    assert loads == []
    with pytest.raises(IndexError):
        features[np.array([1000])]


def _plan(encoding: str) -> ShardPlan:
    return ShardPlan(
        rows=4, clicks=1, shard_rows=4, bounds=[(0, 4)], teacher_folds=2, field_names=["a"],
        field_dims=[3], fingerprint="f", encoding=encoding, metadata={}, loading_seconds=0.0,
        shard_seconds=[0.0], planned_at=0.0,
    )


@pytest.mark.parametrize(
    "later, reused",
    [
        ({"a": ["x", "y", "y", "z"], "label": [0, 1, 0, 0]}, True),
        ({"a": ["x", "y", "y", "z", "z"], "label": [0, 1, 0, 0, 0]}, False),  # a row more
        ({"a": ["x", "w", "w", "z"], "label": [0, 1, 0, 0]}, False),  # same sizes, other values
        ({"a": ["x", "y", "y", "z"], "label": [0, 1, 1, 0]}, False),  # another click
    ],
)
def test_a_later_run_reuses_the_shards_only_of_the_same_data(
    tmp_path, later: dict[str, list], reused: bool, monkeypatch
) -> None:
    from types import SimpleNamespace

    import pyarrow as pa

    from nacs_engine.data.encoding import Encoder
    from worker import shards
    from worker.settings import SharedSettings
    from worker.storage import join_uri, write_bytes

    def fitted(columns: dict[str, list]) -> Encoder:
        return Encoder(min_count=1).fit(pa.table(columns))

    settings = SharedSettings(storage_uri=str(tmp_path / "storage"))
    store = SimpleNamespace(settings=settings)
    sharding = shards.Sharding(store, None, "job1", 2)  # type: ignore[arg-type]
    earlier = _plan(fitted({"a": ["x", "y", "y", "z"], "label": [0, 1, 0, 0]}).fitted_digest())
    plan_uri = join_uri(shards.scratch_uri(settings, "job1"), shards.PLAN_FILE)
    write_bytes(plan_uri, earlier.model_dump_json().encode(), settings)
    fresh = _plan("fresh")
    encoded, enqueued = [], []
    monkeypatch.setattr(sharding, "_encode", lambda *args: encoded.append(1) or fresh)
    monkeypatch.setattr(sharding, "_enqueue", enqueued.append)
    sharding.hand_over(
        None, fitted(later), None, report=lambda *args: None,
        retried=lambda what, phase, step: step(), workdir=str(tmp_path),
    )
    assert enqueued == [earlier if reused else fresh]
    assert encoded == ([] if reused else [1])


def _running_shard_job(create, store, monkeypatch, deadline: float) -> str:
    """A job whose run 1 is spread over workers, with the run's deadline ``deadline``; the
    environment is the test's, as a worker's would be."""
    from worker.records import JobStatus, rfc3339

    settings = store.settings
    for name, value in (
        ("NACS_REDIS_URL", settings.redis_url), ("NACS_REDIS_PREFIX", settings.redis_prefix),
        ("NACS_QUEUE", settings.queue), ("NACS_STORAGE_URI", settings.storage_uri),
    ):
        monkeypatch.setenv(name, value)
    record, _ = create("acme", {"dataset_uri": "file:///data.parquet", "ratio": 0.1})
    store.transition(record.id, JobStatus.running, attempts=1, deadline_at=rfc3339(deadline))
    return record.id


def test_a_shard_job_past_the_runs_deadline_fails_the_job_with_timeout(
    create, store, monkeypatch
) -> None:
    import time

    from worker.records import JobStatus
    from worker.shards import _shard_job

    ran: list[str] = []
    job_id = _running_shard_job(create, store, monkeypatch, time.time() - 1)
    outcome = _shard_job(
        "fold", "teacher fold 0", job_id, store.settings.redis_prefix, 1,
        lambda run: ran.append("fold"),
    )
    assert ran == [] and outcome["status"] == "failed"
    record = store.get(job_id)
    assert record is not None and record.status == JobStatus.failed
    assert record.error is not None and record.error.code == "timeout"
    assert record.error.message.startswith("teacher fold 0: the job ran longer than")
    # before the deadline the work runs
    job_id = _running_shard_job(create, store, monkeypatch, time.time() + 60)
    outcome = _shard_job(
        "fold", "teacher fold 0", job_id, store.settings.redis_prefix, 1,
        lambda run: ran.append("fold"),
    )
    assert ran == ["fold"] and outcome["status"] == "succeeded"


def test_the_shard_jobs_of_a_run_end_by_its_deadline(create, store, queue) -> None:
    """The plan records the run's deadline, one job timeout after the run began, and RQ stops
    each shard job by it."""
    import time

    from rq.job import Job

    from worker.records import JobStatus, parse_time
    from worker.shards import Sharding

    record, _ = create("acme", {"dataset_uri": "file:///data.parquet", "ratio": 0.1})
    store.transition(record.id, JobStatus.running, attempts=1)
    began = time.time()
    sharding = Sharding(store, queue, record.id, 1)
    time.sleep(1.5)  # the folds are queued a while after the run began
    sharding._enqueue(_plan("e"))
    stored = store.get(record.id)
    assert stored is not None
    deadline = parse_time(stored.deadline_at)
    assert deadline is not None
    limit = store.settings.job_timeout_s
    assert began - 0.001 <= deadline - limit <= time.time()  # to the millisecond
    jobs = [Job.fetch(rq_id, connection=store.redis) for rq_id in stored.shard_jobs]
    assert len(jobs) == 3  # two folds and the reduce
    # what is left of the job timeout: less the 1.5 s and more since the run began
    assert all(limit - (time.time() - began) - 1 <= job.timeout <= limit - 1 for job in jobs)


def test_a_shard_job_that_fails_past_the_deadline_fails_the_job_with_timeout(
    create, store, monkeypatch
) -> None:
    """Whatever error RQ's alarm became on its way out of the work (a library may wrap it)."""
    import time

    from nacs_engine.errors import DataError
    from worker.shards import _shard_job

    def work(run) -> None:
        time.sleep(2.5)
        raise DataError("unreadable_data", "the read was cut short")

    job_id = _running_shard_job(create, store, monkeypatch, time.time() + 2)
    _shard_job("fold", "teacher fold 0", job_id, store.settings.redis_prefix, 1, work)
    record = store.get(job_id)
    assert record is not None and record.error is not None
    assert record.error.code == "timeout"
    # before the deadline the error is its own
    job_id = _running_shard_job(create, store, monkeypatch, time.time() + 60)
    _shard_job("fold", "teacher fold 0", job_id, store.settings.redis_prefix, 1, work)
    record = store.get(job_id)
    assert record is not None and record.error is not None
    assert record.error.code == "unreadable_data"
