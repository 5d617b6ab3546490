"""One job across several workers (worker.shards): the real API, real RQ workers, the tests'
own Redis and local storage. The coreset is byte for byte the one of the job run as one, with
1, 2 or 4 workers, after a worker is killed in the middle of a fold; a bad shard and a cancel
end the job."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.stack import Stack, start_stack, wait_until

pytestmark = pytest.mark.e2e

ROWS = 200_000
SHARD_ROWS = 50_000
OPTIONS = {"seed": 7, "shard_rows": SHARD_ROWS, "teacher_folds": 4, "audit_seeds": 1}


@pytest.fixture(scope="module")
def sharded_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200,000 synthetic Criteo-like rows with 10% flipped labels: four shards of 50,000."""
    from nacs_engine.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("sharded") / "clicks.parquet"
    write_synthetic(path, ROWS, format="parquet", n_fields=10, flip_rate=0.1, seed=5)
    return path


def body(path: Path) -> dict[str, Any]:
    return {"dataset_uri": str(path), "ratio": 0.02, "options": OPTIONS}


@pytest.fixture(scope="module")
def reference_run(sharded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the same request run as one job (no queue), on one torch thread."""
    from worker import tasks
    from worker.settings import SharedSettings
    from worker.spec import JobRequest

    out = tmp_path_factory.mktemp("reference") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tasks.execute(
            JobRequest.model_validate(body(sharded_data)), str(out), job_id="reference",
            settings=SharedSettings(storage_uri=str(out.parent / "storage")),
        )
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> bytes:
    return (reference_run / "coreset.parquet").read_bytes()


@pytest.fixture(scope="module")
def reference_audit(reference_run: Path) -> dict[str, Any]:
    audit: dict[str, Any] = json.loads((reference_run / "manifest.json").read_text())["audit"]
    return audit


@pytest.fixture
def shard_stack(tmp_path: Path, sharded_data: Path) -> Iterator[Stack]:
    running = start_stack(
        tmp_path / "stack", allowed_uris=f"file://{sharded_data.parent}/",
        # A shard job's first heartbeat comes after its work horse imported torch: seconds on
        # a loaded machine.
        env={"NACS_TORCH_THREADS": "1", "NACS_HEARTBEAT_TIMEOUT_S": "20"},
    )
    yield running
    running.stop()


def coreset_bytes(job: dict[str, Any]) -> bytes:
    return Path(job["result"]["coreset_uri"][len("file://") :]).read_bytes()


def manifest_of(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    with stack.client() as client:
        return client.get(f"/jobs/{job['id']}/result").json()


def scratch_of(stack: Stack, job_id: str) -> Path:
    assert stack.storage_dir is not None
    return stack.storage_dir / ".scratch" / job_id


def test_same_coreset_with_one_two_and_four_workers(
    shard_stack: Stack, sharded_data: Path, reference: bytes, reference_audit: dict[str, Any],
    reference_run: Path,
) -> None:
    whole = json.loads((reference_run / "manifest.json").read_text())
    seen: list[bytes] = []
    for workers in (1, 2, 4):
        while len(shard_stack.workers) < workers:
            shard_stack.start_worker()
        job = shard_stack.submit(body(sharded_data))
        final = shard_stack.wait(job["id"], timeout_s=600)
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 1
        seen.append(coreset_bytes(final))
        manifest = manifest_of(shard_stack, final)
        shards = manifest["shards"]
        assert shards["count"] == ROWS // SHARD_ROWS and shards["teacher_folds"] == 4
        assert shards["bounds"][1] == [SHARD_ROWS, 2 * SHARD_ROWS]
        names = [entry["job"] for entry in shards["jobs"]]
        audit_jobs = [f"audit: {family}, seed 1, {arm}" for family in ("logistic", "deepfm")
                      for arm in ("coreset", "random")]
        assert names == [
            "plan", *(f"teacher fold {f}" for f in range(4)), "reduce", *audit_jobs, "finish"
        ]
        # The audit's models ran as jobs of their own, with the scores of the job run as one.
        assert manifest["audit"]["families"] == reference_audit["families"]
        assert manifest["audit"]["verdict"] == reference_audit["verdict"]
        assert manifest["phase_seconds"]["auditing"] > 0
        # the folds' epochs and what the data says of itself come through the shard jobs
        for key in ("epochs", "best_epochs", "max_epochs"):
            teacher = manifest["diagnostics"]["teacher"]
            assert teacher[key] == whole["diagnostics"]["teacher"][key], key
        for key in ("label_values", "unread_keys", "unread_key_count", "whole_number_columns"):
            assert manifest["dataset"][key] == whole["dataset"][key], key
        assert manifest["coreset"]["rows"] == pq.read_table(
            final["result"]["coreset_uri"][len("file://") :]
        ).num_rows
        assert not scratch_of(shard_stack, job["id"]).exists(), "the scratch folder is removed"
    assert seen == [reference] * 3, "the same coreset, byte for byte, as the job run as one"
    metrics = httpx.get(f"{shard_stack.url}/metrics", timeout=10).text
    assert 'nacs_shard_jobs_total{kind="fold",outcome="succeeded"} 12.0' in metrics
    assert 'nacs_shard_jobs_total{kind="reduce",outcome="succeeded"} 3.0' in metrics
    assert 'nacs_shard_jobs_total{kind="audit",outcome="succeeded"} 12.0' in metrics
    assert 'nacs_shard_jobs_total{kind="finish",outcome="succeeded"} 3.0' in metrics


def running_shard(stack: Stack, job_id: str, kind: str = "fold") -> bool:
    """Whether a shard job of ``kind`` ("fold" or "audit") of the job runs."""
    record = stack.store().get(job_id)
    if record is None or not record.shard_jobs:
        return False
    connection = stack.store().redis
    ids = [rq_id for rq_id in record.shard_jobs if f"-{kind}-" in rq_id]
    jobs = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)
    return any(job is not None and job.get_status() == "started" for job in jobs)


@pytest.mark.parametrize("kind", ["fold", "audit"])
def test_worker_killed_in_a_shard_job_the_job_succeeds_once_with_the_same_coreset(
    shard_stack: Stack, sharded_data: Path, reference: bytes, reference_audit: dict[str, Any],
    kind: str,
) -> None:
    job = shard_stack.submit(body(sharded_data))
    wait_until(lambda: running_shard(shard_stack, job["id"], kind), 300, what=f"a {kind} running")
    shard_stack.kill_worker(shard_stack.workers[0], signal.SIGKILL)
    shard_stack.start_worker()
    final = shard_stack.wait(job["id"], timeout_s=600)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2, "the job ran again once"
    assert coreset_bytes(final) == reference
    assert manifest_of(shard_stack, final)["audit"]["families"] == reference_audit["families"]
    store = shard_stack.store()
    assert int(store.redis.hget(store.keys.finished, "succeeded") or 0) == 1, "it ended once"


def test_a_bad_shard_fails_the_job_naming_it(shard_stack: Stack, sharded_data: Path) -> None:
    import pyarrow as pa

    rows = 5000
    rng = np.random.default_rng(0)
    labels = (rng.random(rows) < 0.3).astype(np.int64)
    labels[3500] = 2
    path = sharded_data.parent / "bad.parquet"
    features = {"f0": rng.integers(0, 20, rows), "f1": rng.integers(0, 9, rows)}
    table = pa.table({"label": labels, **features})
    pq.write_table(table, path)
    options = {"shard_rows": 1000}
    job = shard_stack.submit({"dataset_uri": str(path), "ratio": 0.1, "options": options})
    final = shard_stack.wait(job["id"], timeout_s=120)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "labels_not_binary"
    assert "shard 3" in final["error"]["message"], final["error"]
    assert final["attempts"] == 1, "bad data is not retried"


def test_cancel_stops_every_shard(shard_stack: Stack, sharded_data: Path) -> None:
    shard_stack.start_worker()
    job = shard_stack.submit(body(sharded_data))
    wait_until(lambda: running_shard(shard_stack, job["id"]), 300, what="a fold running")
    with shard_stack.client() as client:
        assert client.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    final = shard_stack.wait(job["id"], timeout_s=60)
    assert final["status"] == "cancelled", final
    assert final["progress"]["phase"] == "selecting", "where it had got to"
    record = shard_stack.store().get(job["id"])
    assert record is not None and len(record.shard_jobs) == 5
    connection = shard_stack.store().redis

    def all_ended() -> bool:
        jobs = Job.fetch_many(record.shard_jobs, connection=connection, serializer=JSONSerializer)
        return all(
            job is None or job.get_status() in ("finished", "failed", "stopped", "canceled")
            for job in jobs
        )

    wait_until(all_ended, 30, what="every shard job ended")
    wait_until(lambda: not scratch_of(shard_stack, job["id"]).exists(), 30, what="scratch removed")
    output = Path(final["request"]["output_uri"][len("file://") :])
    assert not (output / "manifest.json").exists()
