"""The SDK and CLI against the real stack: uvicorn serving the API, a real RQ worker, real Redis."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nacs_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    Coreset,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
)
from nacs_client.cli import main
from tests.stack import TENANT_KEYS, Stack, make_ctr_parquet, start_stack

pytestmark = pytest.mark.e2e

N_ROWS = 2000
KEY = TENANT_KEYS["alpha"]
# The real engine when it is there; a baseline otherwise (same contract, faster).
HAS_NACS = importlib.util.find_spec("nacs_engine.nacs") is not None
METHOD = "nacs" if HAS_NACS else "stratified"
OPTIONS = {"rounds": 1, "mc_passes": 2, "device": "cpu"} if HAS_NACS else {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    running = start_stack(tmp_path_factory.mktemp("client-stack"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> Path:
    return make_ctr_parquet(stack.tmp_dir / "data" / "train.parquet", N_ROWS, seed=5)


def check_take(coreset, dataset: Path) -> None:
    """take() on the original table gives exactly the selected rows, aligned with their soft
    labels."""
    table = pq.read_table(dataset)
    written = pq.read_table(coreset.uri)
    expected_rows = written.column("row").to_numpy()
    np.testing.assert_array_equal(coreset.rows, expected_rows)
    np.testing.assert_array_equal(coreset.soft_labels, written.column("soft_label").to_numpy())

    picked = coreset.take(table)
    assert picked.equals(table.take(pa.array(expected_rows)))
    picked_labels = picked.column("label").to_numpy().astype(np.float32)
    np.testing.assert_array_equal(picked_labels, coreset.labels)

    frame = coreset.take(table.to_pandas())
    assert frame.index.tolist() == expected_rows.tolist()
    np.testing.assert_array_equal(frame["label"].to_numpy().astype(np.float32), coreset.labels)

    features = np.stack([table.column(f"f{i}").to_numpy() for i in range(4)], axis=1)  # (N, 4)
    np.testing.assert_array_equal(coreset.take(features), features[expected_rows])

    assert np.all((coreset.soft_labels >= 0) & (coreset.soft_labels <= 1))
    assert np.all(np.isfinite(coreset.weights) & (coreset.weights >= 0))
    with pytest.raises(ValueError, match=f"had {N_ROWS}"):
        coreset.take(table.slice(0, N_ROWS - 1))


def test_create_wait_with_progress_result_and_take(stack: Stack, dataset: Path) -> None:
    seen = []
    with Client(stack.url, KEY) as client:
        job = client.jobs.create_and_wait(
            str(dataset),
            ratio=0.1,
            method=METHOD,
            options=OPTIONS,
            poll_interval=0.05,
            timeout=240,
            progress=seen.append,
        )
        assert job.status == "succeeded"
        assert job.result is not None and job.result.size == N_ROWS // 10
        assert seen[-1].status == "succeeded"
        running = [state for state in seen if state.status == "running"]
        assert running, "wait saw the job running"
        assert all(0.0 <= state.progress.fraction <= 1.0 for state in running)

        coreset = client.jobs.result(job.id)
        assert len(coreset) == N_ROWS // 10
        assert coreset.manifest.job_id == job.id
        assert coreset.manifest.data_rows == N_ROWS
        check_take(coreset, dataset)

        assert job.id in [listed.id for listed in client.jobs.list(limit=1)]


def test_progress_bar_on_the_real_service(stack: Stack, dataset: Path, capsys) -> None:
    with Client(stack.url, KEY) as client:
        job = client.jobs.create_and_wait(
            str(dataset), size=150, method="random", poll_interval=0.05, timeout=120, progress=True
        )
    assert job.status == "succeeded"
    err = capsys.readouterr().err
    assert job.id in err and "100.0%" in err


@pytest.mark.anyio
async def test_async_client_end_to_end(stack: Stack, dataset: Path) -> None:
    async with AsyncClient(stack.url, KEY) as client:
        job = await client.jobs.create_and_wait(
            str(dataset), size=250, method=METHOD, options=OPTIONS, poll_interval=0.05, timeout=240
        )
        assert job.status == "succeeded"
        coreset = await client.jobs.result(job.id)
        assert len(coreset) == 250
        check_take(coreset, dataset)
        ids = [listed.id async for listed in client.jobs.list(limit=2)]
        assert job.id in ids


def test_errors_from_the_real_service(stack: Stack, dataset: Path) -> None:
    with Client(stack.url, KEY) as client:
        with pytest.raises(NotFoundError):
            client.jobs.get("no-such-job")
        with pytest.raises(BadRequestError) as raised:
            client.jobs.create(str(dataset), ratio=0.1, options={"rounds": 99})
        assert raised.value.field == "options.rounds"
        first = client.jobs.create(
            str(dataset), size=10, method="random", idempotency_key="e2e-key"
        )
        again = client.jobs.create(
            str(dataset), size=10, method="random", idempotency_key="e2e-key"
        )
        assert again.id == first.id
        with pytest.raises(ConflictError):
            client.jobs.create(str(dataset), size=11, method="random", idempotency_key="e2e-key")

        no_label = stack.tmp_dir / "data" / "no-label.parquet"
        pq.write_table(pa.table({"f0": np.arange(100)}), no_label)
        with pytest.raises(JobFailedError) as failed:
            client.jobs.create_and_wait(
                str(no_label), size=10, method="random", poll_interval=0.05, timeout=60
            )
        assert failed.value.code and failed.value.message

    with Client(stack.url, "wrong-key") as client, pytest.raises(AuthenticationError):
        client.jobs.get("anything")
    with Client(stack.url, TENANT_KEYS["beta"]) as client, pytest.raises(NotFoundError):
        client.jobs.get(first.id)  # another tenant's job does not exist for beta


@pytest.mark.skipif(not HAS_NACS, reason="needs a method that runs long enough to be cancelled")
def test_cancel_a_running_job(stack: Stack, dataset: Path) -> None:
    slow = {"rounds": 20, "epochs_per_round": 5, "mc_passes": 50, "device": "cpu"}
    cancelled = []
    with Client(stack.url, KEY) as client:
        job = client.jobs.create(str(dataset), ratio=0.5, method="nacs", options=slow)

        def cancel_once_running(state) -> None:
            if state.status == "running" and not cancelled:
                cancelled.append(client.jobs.cancel(job.id))

        with pytest.raises(JobCancelledError) as raised:
            client.jobs.wait(job.id, poll_interval=0.05, timeout=60, progress=cancel_once_running)
        assert cancelled[0].status in ("running", "cancelled")
        assert raised.value.job.status == "cancelled"
        assert client.jobs.cancel(job.id).status == "cancelled"  # cancelling again is harmless
        with pytest.raises(JobCancelledError):
            client.jobs.result(job.id)


def test_cli_against_the_real_service(stack: Stack, dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"NACS_BASE_URL": stack.url, "NACS_API_KEY": KEY}
    submitted = runner.invoke(
        main,
        [
            "submit",
            str(dataset),
            "--size",
            "100",
            "--method",
            "random",
            "--wait",
            "--poll-interval",
            "0.05",
            "--json",
        ],
        env=env,
    )
    assert submitted.exit_code == 0, submitted.output
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded"

    listed = runner.invoke(main, ["jobs", "--limit", "50"], env=env)
    assert listed.exit_code == 0
    assert any(
        line.split()[:2] == [job["id"], "succeeded"] for line in listed.stdout.splitlines()[1:]
    )

    downloaded = runner.invoke(main, ["download", job["id"], str(tmp_path / "out")], env=env)
    assert downloaded.exit_code == 0, downloaded.output
    assert pq.read_table(tmp_path / "out" / "coreset.parquet").num_rows == 100
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["job_id"] == job["id"]

    missing = runner.invoke(main, ["status", "no-such-job"], env=env)
    assert missing.exit_code == 3
    unauthorised = runner.invoke(main, ["--api-key", "wrong", "status", job["id"]], env=env)
    assert unauthorised.exit_code == 4


def test_coreset_from_s3_through_an_s3_compatible_endpoint(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("s3fs")
    from tests.stack import MotoServer

    server = MotoServer.start()
    try:
        server.create_bucket("results")
        table = pa.table(
            {
                "row": pa.array([0, 5, 9], pa.int64()),
                "label": pa.array([1.0, 0.0, 1.0], pa.float32()),
                "soft_label": pa.array([0.8, 0.1, 0.6], pa.float32()),
                "weight": pa.array([1.0, 1.5, 0.5], pa.float32()),
                "uncertainty": pa.array([0.1, 0.2, 0.3], pa.float32()),
            }
        )
        pq.write_table(table, tmp_path / "coreset.parquet")
        server.client().upload_file(
            str(tmp_path / "coreset.parquet"), "results", "job-1/coreset.parquet"
        )
        for name, value in MotoServer.CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("NACS_S3_ENDPOINT_URL", server.endpoint)
        coreset = Coreset.read("s3://results/job-1/coreset.parquet")
        np.testing.assert_array_equal(coreset.rows, [0, 5, 9])
        np.testing.assert_array_equal(coreset.take(np.arange(10) * 10), [0, 50, 90])
        monkeypatch.delenv("NACS_S3_ENDPOINT_URL")
        explicit = Coreset.read(
            "s3://results/job-1/coreset.parquet", storage_options={"endpoint_url": server.endpoint}
        )
        np.testing.assert_array_equal(explicit.soft_labels, coreset.soft_labels)
    finally:
        server.stop()
