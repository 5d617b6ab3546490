"""One job across workers: wall time with 1 and 2 workers, and each worker's peak RSS.

1. Writes N synthetic Criteo-like rows with 39 fields to a Parquet file
   (``write_synthetic``) unless it is already there.
2. Starts a throwaway ``redis-server`` on a free loopback port.
3. For each worker count W (``--workers``, default 1 and 2): starts W ``nacs worker``
   processes (``python -m service worker``, torch on one thread each:
   ``NACS_TORCH_THREADS=1``), records a ``nacs`` job at ``--ratio`` with rows per shard
   ``--shard-rows`` and puts it on the queue as the API does (``worker.enqueue``), waits
   until it ends, stops the workers and reads each one's peak RSS from ``wait4`` (a worker's
   peak covers the work horses it forked: one per job it ran). The wall time runs from the
   enqueue to the job's end. With ``--single``, the same job also runs as one (rows per shard
   above the row count) on one worker.
4. Checks that every run wrote the same coreset.parquet, byte for byte, and prints a table
   with the phases of the manifest and the time of every shard job.

    .venv/bin/python bench/shard_speed.py --rows 1000000 --shard-rows 250000 --single
    .venv/bin/python bench/shard_speed.py --rows 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load import start_redis  # noqa: E402  (bench/load.py, beside this script)


def submit(env: dict[str, str], request: dict[str, Any]) -> str:
    """Record and enqueue a job as the API does; returns its id."""
    import redis.asyncio

    from worker.enqueue import (
        create_job,
        enqueue,
        new_job_id,
        new_record,
        queue_of,
        register_scripts,
    )
    from worker.records import connect
    from worker.settings import SharedSettings

    settings = SharedSettings(
        redis_url=env["NACS_REDIS_URL"],
        redis_prefix=env["NACS_REDIS_PREFIX"],
        queue=env["NACS_QUEUE"],
        storage_uri=env["NACS_STORAGE_URI"],
    )
    job_id = new_job_id()
    record = new_record(
        "bench", request | {"output_uri": f"{settings.storage_uri}/bench/jobs/{job_id}"}, job_id
    )

    async def create() -> None:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            await create_job(register_scripts(client), client, settings, record)
        finally:
            await client.aclose()

    asyncio.run(create())
    enqueue(queue_of(connect(settings.redis_url), settings), record, settings)
    return job_id


def wait_for(env: dict[str, str], job_id: str, timeout_s: float) -> Any:
    from worker.records import RecordStore, connect
    from worker.settings import SharedSettings

    settings = SharedSettings(
        redis_url=env["NACS_REDIS_URL"], redis_prefix=env["NACS_REDIS_PREFIX"]
    )
    store = RecordStore(connect(settings.redis_url), settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.status.value in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")


def run(
    env: dict[str, str], workers: int, request: dict[str, Any], workdir: Path, timeout_s: float
) -> dict[str, Any]:
    """Run ``request`` with ``workers`` worker processes; wall seconds, peak RSS per worker."""
    processes = []
    for index in range(workers):
        log = open(workdir / f"worker-{workers}-{index}.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "service",
                        "worker",
                        "--name",
                        f"bench-{workers}-{index}",
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    time.sleep(3)  # the workers connect and listen
    started = time.perf_counter()
    job_id = submit(env, request)
    record = wait_for(env, job_id, timeout_s)
    seconds = time.perf_counter() - started
    peaks = []
    for process, log in processes:
        process.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(process.pid, 0)
        log.close()
        peaks.append(usage.ru_maxrss / 1024)  # KiB -> MiB: the worker or a horse it forked
    if record.status.value != "succeeded":
        raise RuntimeError(f"job {job_id} {record.status.value}: {record.error}")
    manifest = json.loads(Path(record.result.manifest_uri[len("file://") :]).read_text())
    coreset = Path(record.result.coreset_uri[len("file://") :]).read_bytes()
    return {
        "workers": workers,
        "seconds": seconds,
        "peak_rss_mib": peaks,
        "manifest": manifest,
        "coreset": coreset,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument(
        "--shard-rows", type=int, default=None, help="rows per shard (default: the engine's)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--single", action="store_true", help="also run the job as one, on one worker"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="Parquet file (written when missing)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()

    from nacs_engine.data.synthetic import write_synthetic

    data = args.data or ROOT / ".nacs" / "bench" / f"shard-speed-{args.rows}.parquet"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.rows:,} rows to {data}", flush=True)
        write_synthetic(data, args.rows, format="parquet", n_fields=39, flip_rate=0.1, seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="nacs-shard-speed-"))
    redis_process, redis_url = start_redis(workdir)
    options: dict[str, Any] = {"seed": 0}
    if args.shard_rows:
        options["shard_rows"] = args.shard_rows
    request = {"dataset_uri": str(data), "ratio": args.ratio, "method": "nacs", "options": options}
    base = {k: v for k, v in os.environ.items() if not k.startswith("NACS_")}
    runs: list[tuple[str, dict[str, Any]]] = []
    try:
        plans = [(f"{w} worker(s)", w, request) for w in args.workers]
        if args.single:
            one = request | {"options": options | {"shard_rows": 100_000_000}}
            plans.insert(0, ("as one job", 1, one))
        for name, workers, body in plans:
            env = base | {
                "NACS_REDIS_URL": redis_url,
                "NACS_REDIS_PREFIX": f"bench-{workers}-{len(runs)}:",
                "NACS_QUEUE": f"bench-{len(runs)}",
                "NACS_STORAGE_URI": f"file://{workdir / 'storage'}",
                "NACS_ALLOWED_URIS": "*",
                "NACS_WORKDIR": str(workdir),
                "NACS_TORCH_THREADS": "1",
                "NACS_HEARTBEAT_TIMEOUT_S": "120",
            }
            print(f"running {name} ...", flush=True)
            runs.append((name, run(env, workers, body, workdir, args.timeout)))
            print(f"  {runs[-1][1]['seconds']:.1f} s", flush=True)
    finally:
        redis_process.terminate()
        redis_process.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    same = len({result["coreset"] for _, result in runs}) == 1
    # Speed-ups are against the sharded job on one worker, whichever order the runs took.
    ones = [result["seconds"] for name, result in runs if name == "1 worker(s)"]
    first = ones[0] if ones else runs[0][1]["seconds"]
    load = os.getloadavg()[0]
    print(f"\n{args.rows:,} rows, ratio {args.ratio}, load average at the end {load:.1f}")
    print(
        "| run | wall s | speed-up over 1 worker | peak RSS per worker (MiB) | loading "
        "| selecting | auditing | shard jobs (s) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for name, result in runs:
        phases = result["manifest"]["phase_seconds"]
        shards = result["manifest"].get("shards") or {}
        jobs = job_times(shards.get("jobs", []))
        peaks = ", ".join(f"{peak:,.0f}" for peak in result["peak_rss_mib"])
        print(
            f"| {name} | {result['seconds']:.1f} | {first / result['seconds']:.2f}x | {peaks} | "
            f"{phases.get('loading', 0):.1f} | {phases.get('selecting', 0):.1f} | "
            f"{phases.get('auditing', 0):.1f} | {jobs} |"
        )
    print(f"\nsame coreset.parquet, byte for byte, in every run: {same}")


def job_times(jobs: list[dict[str, Any]]) -> str:
    """Each shard job's seconds; the audit's models (one job each) as their count and sum."""
    audits = [job["seconds"] for job in jobs if job["job"].startswith("audit:")]
    parts = [
        f"{job['job']} {job['seconds']:.1f}" for job in jobs if not job["job"].startswith("audit:")
    ]
    if audits:
        parts.insert(len(parts) - 1, f"{len(audits)} audit models {sum(audits):.1f} in all")
    return ", ".join(parts) or "-"


if __name__ == "__main__":
    main()
