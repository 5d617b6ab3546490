"""Submit, watch, succeed, read the result: the real API, Redis and worker processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.stack import MotoServer, Stack, make_ctr_parquet, start_stack

pytestmark = pytest.mark.e2e

CORESET_SCHEMA = {
    "row": "int64",
    "label": "float",
    "soft_label": "float",
    "weight": "float",
    "uncertainty": "float",
}


def check_result(job: dict, manifest: dict, table, n_rows: int, expected_size: int) -> None:
    """What every succeeded job must hold: sizes, columns and dtypes, valid rows, manifest
    fields."""
    assert job["status"] == "succeeded"
    assert job["finished_at"] and job["started_at"] and job["error"] is None
    assert job["result"]["size"] == expected_size
    assert {
        name: str(table.schema.field(name).type) for name in table.column_names
    } == CORESET_SCHEMA
    rows = table.column("row").to_numpy()
    assert table.num_rows == expected_size
    assert rows.min() >= 0 and rows.max() < n_rows
    assert np.all(np.diff(rows) > 0), "rows are unique and ascending"
    for column in ("soft_label", "uncertainty"):
        values = table.column(column).to_numpy()
        assert np.all(np.isfinite(values))
    assert np.all(table.column("weight").to_numpy() > 0)
    assert manifest["job_id"] == job["id"]
    assert manifest["request"] == job["request"]
    assert manifest["dataset"]["rows"] == n_rows
    assert manifest["coreset"]["rows"] == expected_size
    assert manifest["coreset"]["clicks"] == int(table.column("label").to_numpy().sum())
    assert manifest["dataset"]["fingerprint"]
    assert {"engine_version", "seed", "device", "phase_seconds", "diagnostics"} <= set(manifest)
    assert {"loading", "writing"} <= set(manifest["phase_seconds"])
    assert manifest["files"] == {
        "coreset": "coreset.parquet", "report_html": "report.html", "report_json": "report.json",
        "manifest": "manifest.json",
    }, "every succeeded job, whatever its method, has its report"


def test_random_job_on_local_storage(stack: Stack, small_parquet: Path) -> None:
    job = stack.submit({"dataset_uri": str(small_parquet), "ratio": 0.1, "method": "random"})
    assert job["status"] == "queued"
    assert job["request"]["options"]["rounds"] == 3, "defaults are filled in"
    states = stack.watch(job["id"], timeout_s=60)
    final = states[-1]
    assert final["status"] == "succeeded", final["error"]
    assert final["progress"]["fraction"] == 1.0
    output = Path(final["result"]["output_uri"][len("file://") :])
    assert output == stack.storage_dir / "alpha" / "jobs" / job["id"]
    manifest = json.loads((output / "manifest.json").read_text())
    table = pq.read_table(output / "coreset.parquet")
    check_result(final, manifest, table, 4000, 400)
    report = json.loads((output / "report.json").read_text())
    assert report["job_id"] == job["id"] and report["coreset"]["rows"] == 400
    with stack.client() as client:
        assert client.get(f"/jobs/{job['id']}/result").json() == manifest
        served = client.get(f"/jobs/{job['id']}/report")
        assert served.status_code == 200
        assert served.text == (output / "report.html").read_text()
    assert not list(output.glob(".part-*")), "no temporary files left behind"


def test_nacs_job_progress_moves(stack: Stack, small_parquet: Path) -> None:
    body = {
        "dataset_uri": str(small_parquet),
        "size": 300,
        "method": "nacs",
        "options": {"rounds": 2, "mc_passes": 3, "device": "cpu"},
    }
    job = stack.submit(body)
    states = stack.watch(job["id"], timeout_s=120)
    final = states[-1]
    assert final["status"] == "succeeded", final["error"]
    phases = [s["progress"]["phase"] for s in states if s["status"] == "running"]
    assert "selecting" in phases
    fractions = [
        s["progress"]["fraction"]
        for s in states
        if s["status"] == "running" and s["progress"]["phase"] == "selecting"
    ]
    assert fractions == sorted(fractions)
    output = Path(final["result"]["output_uri"][len("file://") :])
    check_result(
        final,
        json.loads((output / "manifest.json").read_text()),
        pq.read_table(output / "coreset.parquet"),
        4000,
        300,
    )
    worker_maps = Path(f"/proc/{stack.workers[0].pid}/maps").read_text()
    assert "libtorch" in worker_maps, (
        "the worker's parent process loads torch once, so that each horse starts at once "
        "(tests/worker/test_spec.py: without running it)"
    )


def test_bad_data_fails_at_once_without_retry(stack: Stack) -> None:
    path = stack.tmp_dir / "data" / "no-label.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"clicked": [0, 1] * 50, "f0": list(range(100))}), path)
    job = stack.submit({"dataset_uri": str(path), "ratio": 0.5, "method": "random"})
    final = stack.wait(job["id"], timeout_s=60)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "label_column_missing"
    assert "label" in final["error"]["message"]
    assert final["attempts"] == 1
    assert final["result"] is None


def test_s3_storage_through_moto(tmp_path: Path, moto: MotoServer) -> None:
    bucket = f"nacs-{int(time.time() * 1000)}"
    moto.create_bucket(bucket)
    local = make_ctr_parquet(tmp_path / "upload.parquet", 3000, seed=2)
    moto.client().upload_file(str(local), bucket, "data/ctr.parquet")
    env = MotoServer.CREDENTIALS | {
        "NACS_STORAGE_URI": f"s3://{bucket}/outputs",
        "NACS_S3_ENDPOINT_URL": moto.endpoint,
    }
    s3_stack = start_stack(tmp_path / "stack", env=env, allowed_uris=f"s3://{bucket}/data/")
    try:
        with s3_stack.client() as client:
            assert client.get("/readyz").status_code == 200
        job = s3_stack.submit(
            {"dataset_uri": f"s3://{bucket}/data/ctr.parquet", "ratio": 0.2, "method": "stratified"}
        )
        final = s3_stack.wait(job["id"], timeout_s=60)
        assert final["status"] == "succeeded", final["error"]
        prefix = f"outputs/alpha/jobs/{job['id']}"
        assert final["result"]["manifest_uri"] == f"s3://{bucket}/{prefix}/manifest.json"
        s3 = moto.client()
        manifest = json.loads(
            s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
        )
        s3.download_file(bucket, f"{prefix}/coreset.parquet", str(tmp_path / "coreset.parquet"))
        check_result(final, manifest, pq.read_table(tmp_path / "coreset.parquet"), 3000, 600)
        with s3_stack.client() as client:
            assert client.get(f"/jobs/{job['id']}/result").json() == manifest
    finally:
        s3_stack.stop()


def test_storage_unreachable(tmp_path: Path) -> None:
    from tests.stack import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    env = MotoServer.CREDENTIALS | {
        "NACS_STORAGE_URI": "s3://nowhere/outputs",
        "NACS_S3_ENDPOINT_URL": dead,
    }
    dead_stack = start_stack(tmp_path / "stack", env=env, allowed_uris="s3://nowhere/")
    try:
        with dead_stack.client() as client:
            ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        assert ready.headers["Retry-After"]
        job = dead_stack.submit(
            {"dataset_uri": "s3://nowhere/data.parquet", "ratio": 0.1, "method": "random"}
        )
        states = dead_stack.watch(job["id"], timeout_s=90, interval_s=0.1)
        final = states[-1]
        assert final["status"] == "failed"
        assert final["error"]["code"] == "storage_unavailable"
        assert "did not answer" in final["error"]["message"]
        assert any("retry" in s["progress"]["message"] for s in states), "the step was retried"
    finally:
        dead_stack.stop()


def test_cancel_stops_the_engine_through_its_progress_callback(
    stack: Stack, small_parquet: Path
) -> None:
    options = {"rounds": 20, "mc_passes": 100, "epochs_per_round": 20, "device": "cpu"}
    job = stack.submit(
        {
            "dataset_uri": str(small_parquet),
            "size": 1000,
            "method": "nacs-paper",
            "options": options,
        }
    )

    def selecting() -> dict | None:
        current = stack.job(job["id"])
        assert current["status"] in ("queued", "running"), current
        return current if current["progress"]["phase"] in ("selecting", "denoising") else None

    from tests.stack import wait_until

    wait_until(selecting, 120, interval_s=0.1, what="selection started")
    with stack.client() as client:
        assert client.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    final = stack.wait(job["id"], timeout_s=20)
    assert final["status"] == "cancelled", final
    assert final["progress"]["message"] == "cancelled while running", (
        "the engine stopped itself, not the reaper"
    )
    assert final["progress"]["phase"] in ("selecting", "denoising"), "where it had got to"


def test_several_workers_share_the_queue(tmp_path: Path, slow_parquet: Path) -> None:
    """Two worker processes on one queue run two jobs at the same time."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from tests.stack import wait_until

    shared = start_stack(
        tmp_path / "stack", workers=2, allowed_uris=f"file://{slow_parquet.parent}/"
    )
    try:
        jobs = [
            shared.submit({"dataset_uri": str(slow_parquet), "size": 10 + i, "method": "random"})
            for i in range(2)
        ]
        wait_until(
            lambda: all(shared.job(job["id"])["status"] == "running" for job in jobs),
            60,
            what="both running at once",
        )
        finals = [shared.wait(job["id"], timeout_s=120) for job in jobs]
        assert [f["status"] for f in finals] == ["succeeded"] * 2
        assert [f["result"]["size"] for f in finals] == [10, 11]
        store = shared.store()
        workers = {
            Job.fetch(
                store.get(f["id"]).rq_job_id, connection=store.redis, serializer=JSONSerializer
            ).worker_name
            for f in finals
        }
        assert len(workers) == 2 and None not in workers
    finally:
        shared.stop()
