"""Cancel a running job, kill a worker mid-job, restart Redis mid-job: the real processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.stack import RedisServer, Stack, start_stack, wait_until

pytestmark = pytest.mark.e2e


def slow_body(path: Path) -> dict:
    return {"dataset_uri": str(path), "ratio": 0.001, "method": "random"}


@pytest.fixture
def fault_stack(tmp_path: Path, slow_parquet: Path):
    running = start_stack(tmp_path / "stack", allowed_uris=f"file://{slow_parquet.parent}/")
    yield running
    running.stop()


def wait_running(stack: Stack, job_id: str) -> dict:
    return stack.watch(job_id, until=("running", "succeeded", "failed", "cancelled"), timeout_s=60)[
        -1
    ]


def test_cancel_running_job(fault_stack: Stack, slow_parquet: Path) -> None:
    job = fault_stack.submit(slow_body(slow_parquet))
    running = wait_running(fault_stack, job["id"])
    assert running["status"] == "running", running
    with fault_stack.client() as client:
        asked = client.post(f"/jobs/{job['id']}/cancel").json()
    assert asked["cancel_requested"] is True
    final = fault_stack.wait(job["id"], timeout_s=15)
    assert final["status"] == "cancelled", final
    assert final["finished_at"] and final["result"] is None
    output = Path(final["request"]["output_uri"][len("file://") :])
    assert not (output / "manifest.json").exists()
    again = fault_stack.submit({"dataset_uri": str(slow_parquet), "size": 10, "method": "random"})
    assert fault_stack.wait(again["id"], timeout_s=90)["status"] == "succeeded", (
        "the worker goes on after a cancel"
    )


def test_worker_killed_mid_job_is_run_again(fault_stack: Stack, slow_parquet: Path) -> None:
    job = fault_stack.submit(slow_body(slow_parquet))
    assert wait_running(fault_stack, job["id"])["status"] == "running"
    fault_stack.kill_worker(fault_stack.workers[0], signal.SIGKILL)
    requeued = fault_stack.watch(job["id"], until=("queued", "failed", "succeeded"), timeout_s=30)[
        -1
    ]
    assert requeued["status"] == "queued", requeued
    assert "running again" in requeued["progress"]["message"]
    fault_stack.start_worker()
    final = fault_stack.wait(job["id"], timeout_s=120)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2


def test_work_horse_killed_alone_is_run_again(fault_stack: Stack, slow_parquet: Path) -> None:
    """An out-of-memory kill takes the forked work horse only; its worker lives on and runs the
    job again."""
    job = fault_stack.submit(slow_body(slow_parquet))
    assert wait_running(fault_stack, job["id"])["status"] == "running"
    worker = fault_stack.workers[0]
    horses = wait_until(lambda: fault_stack.horse_pids(worker), 10, what="work horse")
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    final = fault_stack.wait(job["id"], timeout_s=120)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2
    assert worker.poll() is None, "the worker survived its horse"


def test_job_timeout_fails_the_job(tmp_path: Path, slow_parquet: Path) -> None:
    stack = start_stack(
        tmp_path / "stack",
        allowed_uris=f"file://{slow_parquet.parent}/",
        env={"NACS_JOB_TIMEOUT_S": "2"},
    )
    try:
        # NaCS trains a teacher on the 600,000 rows: far past the 2 s limit on any machine
        # (a random draw of them, reading included, finished within it on a fast one).
        job = stack.submit(slow_body(slow_parquet) | {"method": "nacs"})
        final = stack.wait(job["id"], timeout_s=60)
        assert final["status"] == "failed"
        assert final["error"]["code"] == "timeout"
        assert "NACS_JOB_TIMEOUT_S" in final["error"]["message"]
        assert final["attempts"] == 1, "a timeout is not retried"
    finally:
        stack.stop()


def test_worker_killed_on_last_attempt_fails_with_worker_lost(
    tmp_path: Path, slow_parquet: Path
) -> None:
    stack = start_stack(
        tmp_path / "stack",
        allowed_uris=f"file://{slow_parquet.parent}/",
        env={"NACS_MAX_ATTEMPTS": "1"},
    )
    try:
        job = stack.submit(slow_body(slow_parquet))
        assert wait_running(stack, job["id"])["status"] == "running"
        stack.kill_worker(stack.workers[0], signal.SIGKILL)
        final = stack.wait(job["id"], timeout_s=30)
        assert final["status"] == "failed"
        assert final["error"]["code"] == "worker_lost"
        assert (
            "heartbeat" in final["error"]["message"]
            or "worker process" in final["error"]["message"]
        )
    finally:
        stack.stop()


def test_redis_restart_mid_job_keeps_the_job(tmp_path: Path, slow_parquet: Path) -> None:
    server = RedisServer.start(tmp_path, appendonly=True)
    stack = start_stack(
        tmp_path / "stack", redis_url=server.url, allowed_uris=f"file://{slow_parquet.parent}/"
    )
    try:
        job = stack.submit(slow_body(slow_parquet))
        queued_only = stack.submit(
            {"dataset_uri": str(slow_parquet), "size": 5, "method": "random"}
        )
        running = wait_running(stack, job["id"])
        assert running["status"] == "running"
        server.restart(down_s=1.0)
        final = stack.wait(job["id"], timeout_s=120)
        assert final["status"] == "succeeded", final
        assert final["created_at"] == job["created_at"] and final["request"] == job["request"]
        assert stack.wait(queued_only["id"], timeout_s=60)["status"] == "succeeded"
        with stack.client() as client:
            assert client.get(f"/jobs/{job['id']}/result").status_code == 200
            wait_until(lambda: client.get("/readyz").status_code == 200, 10, what="ready again")
    finally:
        stack.stop()
        server.stop()


def test_worker_without_fork_runs_jobs(tmp_path: Path) -> None:
    """--no-fork (RQ's SimpleWorker): jobs run in the worker process, as a GPU worker keeping its
    CUDA context does."""
    from tests.stack import make_ctr_parquet

    data = make_ctr_parquet(tmp_path / "data" / "ctr.parquet", 1500)
    stack = start_stack(tmp_path / "stack", workers=0, allowed_uris=f"file://{tmp_path}/data/")
    try:
        worker = stack.start_worker(args=["--no-fork"])
        job = stack.submit({"dataset_uri": str(data), "size": 150, "method": "random"})
        final = stack.wait(job["id"], timeout_s=60)
        assert final["status"] == "succeeded", final
        assert stack.horse_pids(worker) == [], "no work horse was forked"
    finally:
        stack.stop()


def test_redis_without_persistence_loses_the_job_and_the_worker_leaves_nothing(
    tmp_path: Path, slow_parquet: Path
) -> None:
    """What docs/DEPLOY.md says is lost without persistence: the running job's record (404 for
    good); its worker stops, removes what it wrote and logs one error naming the job; write
    failures while Redis is down are logged once, not at every progress call."""
    server = RedisServer.start(tmp_path, appendonly=False)
    stack = start_stack(
        tmp_path / "stack", redis_url=server.url, allowed_uris=f"file://{slow_parquet.parent}/"
    )
    try:
        job = stack.submit(slow_body(slow_parquet))
        assert wait_running(stack, job["id"])["status"] == "running"
        server.restart(down_s=8.0)
        with stack.client() as client:
            assert client.get(f"/jobs/{job['id']}").status_code == 404
        worker, log = stack.workers[0], tmp_path / "stack" / "worker-0.log"
        wait_until(lambda: "record is gone" in log.read_text(), 60, what="the worker notices")
        wait_until(lambda: not stack.horse_pids(worker), 60, what="the job stops")
        text = log.read_text()
        errors = [line for line in text.splitlines() if " ERROR " in line and job["id"] in line]
        assert len(errors) == 1, errors
        assert text.count("not written") == 1, "one warning while Redis is down"
        output = Path(job["request"]["output_uri"][len("file://") :])
        assert not output.exists() or list(output.iterdir()) == [], "nothing is left"
        with stack.client() as client:
            assert client.get(f"/jobs/{job['id']}").status_code == 404
    finally:
        stack.stop()
        server.stop()
