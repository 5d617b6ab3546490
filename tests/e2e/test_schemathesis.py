"""Probing the running service: schemathesis generates requests from the served OpenAPI document
(valid and invalid ones, every operation, stateful sequences) against the real stack, with
every check on. The run fails on any check's failure (a 5xx, a response that breaks its schema,
a valid request refused, an invalid one accepted, a wrong Allow header, ...) and on a traceback
in the logs of the API or the worker.

Real values fill in what no schema can state (``schemathesis_hooks``). The run is bounded by
the number of examples per operation and a fixed seed, so that it takes well under two
minutes and fails the same way twice; set ``NACS_PROBE_SEED`` to probe other requests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stack import REPO, TENANT_KEYS, make_ctr_parquet, start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_EXAMPLES = 100
SEED = os.environ.get("NACS_PROBE_SEED", "1")


def schemathesis_command() -> list[str]:
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    return [found]


def test_probing_the_live_service_finds_nothing(tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "stack", env={"NACS_MAX_ACTIVE_JOBS_PER_TENANT": "100000"})
    try:
        data = make_ctr_parquet(tmp_path / "stack" / "data" / "probe.parquet", 500, seed=6)
        body = {"dataset_uri": str(data), "ratio": 0.1, "method": "random"}
        succeeded = stack.submit(body)
        assert stack.wait(succeeded["id"], timeout_s=60)["status"] == "succeeded"
        # The jobs the probe submits stay queued: no worker spends the run's time on them.
        stack.kill_worker(stack.workers[0], signal.SIGTERM)
        queued = stack.submit(body)
        env = os.environ | {
            "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
            "NACS_PROBE_JOB_IDS": f"{succeeded['id']},{queued['id']}",
            "NACS_PROBE_DATASET_URI": f"file://{data}",
            "NACS_PROBE_OUTPUT_PREFIX": f"{stack.storage_uri}/alpha/probes",
        }
        started = time.monotonic()
        run = subprocess.run(
            [
                *schemathesis_command(), "run", f"{stack.url}/openapi.json",
                "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", SEED,
                "--header", f"Authorization: Bearer {TENANT_KEYS['alpha']}",
                "--output-truncate", "false", "--request-timeout", "30",
            ],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        seconds = time.monotonic() - started
        report = run.stdout + run.stderr
        cases = re.search(r"(\d+) generated, (.*)", report)
        print(f"schemathesis: {cases.group(0) if cases else '?'} in {seconds:.0f} s (seed {SEED})")
        assert run.returncode == 0, report[-12000:]
        assert cases is not None and int(cases.group(1)) >= 8 * MAX_EXAMPLES // 2, report[-3000:]
        assert "failure" not in cases.group(2), report[-12000:]
        logs = [stack.tmp_dir / "api.log", *stack.tmp_dir.glob("worker-*.log")]
        for log in logs:
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, f"{log.name}:\n{text[-6000:]}"
    finally:
        stack.stop()
