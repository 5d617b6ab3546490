"""`nacs up`: API, worker and an embedded Redis on one machine, with the job records kept on
disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.stack import REPO, descendants, free_port, make_ctr_parquet, wait_until

pytestmark = pytest.mark.e2e


def start_up(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NACS_")}
    env |= {
        "NACS_STORAGE_URI": str(tmp_path / "nacs" / "storage"),
        # Nothing answers there: nacs up starts an embedded Redis.
        "NACS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "NACS_REDIS_PREFIX": "up-test:",
        "NACS_QUEUE": "up-test",
    }
    log = open(tmp_path / f"up-{port}.log", "ab")  # noqa: SIM115 - the process keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "up", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200,
        60,
        what="nacs up ready",
    )
    return process


def stop_up(process: subprocess.Popen) -> None:
    children = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    for pid in children:
        wait_until(
            lambda pid=pid: (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
            ),
            30,
            what=f"child {pid} gone",
        )


def test_up_runs_a_job_and_keeps_records_across_restarts(tmp_path: Path) -> None:
    data = make_ctr_parquet(tmp_path / "ctr.parquet", 2000)
    port = free_port()
    process = start_up(tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        response = httpx.post(
            f"{url}/jobs",
            json={"dataset_uri": str(data), "ratio": 0.05, "method": "random"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        done = wait_until(
            lambda: (
                (j := httpx.get(f"{url}/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
                and j
            ),
            60,
        )
        assert done["status"] == "succeeded", done
        assert done["result"]["output_uri"].startswith(
            f"file://{tmp_path}/nacs/storage/local/jobs/"
        )
    finally:
        stop_up(process)
    process = start_up(tmp_path, port)
    try:
        again = httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}", timeout=30)
        assert again.status_code == 200 and again.json()["status"] == "succeeded", (
            "the record survived the restart"
        )
    finally:
        stop_up(process)
