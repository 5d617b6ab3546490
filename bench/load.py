"""Service load: the API's throughput and latency next to a bare FastAPI endpoint.

Starts two servers on loopback, each with uvicorn and the same settings (one
process, the same event loop and HTTP parser, access log off):

- ours: ``service.main:create_app`` with a benchmark tenant, its own
  throwaway ``redis-server`` on a free loopback port (or, with ``--redis-url``,
  a fresh key prefix and queue on that Redis), and no workers (submitted jobs
  just queue);
- bare: ``create_bare_app`` below, one trivial JSON endpoint (``GET /bare``) and its
  counterpart that reads a JSON body (``POST /bare``).

Then drives, one at a time and in ``--rounds`` interleaved rounds, each for
``--duration`` seconds with ``--connections`` concurrent keep-alive clients:

- ``GET /jobs/{id}`` of an existing job,
- ``POST /jobs``, each request a unique body (a new job each),
- ``GET /bare`` on the bare app,
- ``POST /bare`` on the bare app, with the same bodies as ``POST /jobs``,

and prints requests/s, p50 and p99 latency (medians over the rounds), errors
(any response other than 2xx, and socket errors), the ratio ours/bare (the
median over rounds of each round's ratio to ``GET /bare``; for ``POST /jobs``
also to ``POST /bare``), and the server's CPU time per request, which the
machine's other load disturbs far less than requests/s. The target is each
endpoint of ours at half the requests/s of ``GET /bare`` or more.
Afterwards the throwaway Redis is stopped, or every key the run made in the
given one is deleted.

The load generator is ``wrk`` (one thread; a Lua script makes each POST body
unique and counts non-2xx responses) when it is on PATH, else an
``httpx.AsyncClient`` with one task per connection (slower: it then measures
the client as much as the server). It runs on the same machine as the
servers and shares its cores with them.

    .venv/bin/python bench/load.py                      # defaults: 3 rounds x 10 s, 32 connections, own Redis
    .venv/bin/python bench/load.py --duration 5 --rounds 1 --client httpx
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def create_bare_app():
    """The reference: FastAPI with one trivial JSON endpoint, and one that also reads a JSON body."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/bare")
    async def bare() -> dict[str, object]:
        return {"id": "0123456789abcdef", "status": "queued", "progress": {"fraction": 0.0}}

    @app.post("/bare")
    async def bare_post(body: dict[str, Any]) -> dict[str, object]:
        return {"id": "0123456789abcdef", "status": "queued", "progress": {"fraction": 0.0}}

    return app


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_server(name: str, app: str, env: dict[str, str], workdir: Path, *, app_dir: Path) -> Server:
    """``uvicorn APP --factory`` on 127.0.0.1; returns once it answers, or raises with its log."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    command = [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--app-dir", str(app_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    probe = "/healthz" if name == "ours" else "/bare"
    import httpx

    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(server.base_url + probe, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} server did not start; its log:\n{log_path.read_text()[-4000:]}")


# ---------------------------------------------------------------- load drivers


@dataclass
class Measure:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


WRK_SCRIPT = r"""
-- Set by the caller through the environment.
local method = os.getenv("LOAD_METHOD")
local path = os.getenv("LOAD_PATH")
local token = os.getenv("LOAD_TOKEN")
local template = os.getenv("LOAD_BODY")     -- POST only; %d is replaced by a counter
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  bad = 0
  headers = {}
  headers["Accept"] = "application/json"
  if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if method == "POST" then headers["Content-Type"] = "application/json" end
end

function request()
  if method == "POST" then
    counter = counter + 1
    local body = string.gsub(template, "%%d", tostring(id * 1000000000 + counter))
    return wrk.format("POST", path, headers, body)
  end
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    if bad <= 3 then io.stderr:write("status " .. status .. ": " .. string.sub(body, 1, 300) .. "\n") end
  end
end

function done(summary, latency, requests)
  local bad_total = 0
  for _, t in ipairs(threads) do bad_total = bad_total + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bad_status": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, bad_total, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, path: str, method: str, token: str, body: str, connections: int, duration: float,
            workdir: Path) -> Measure:
    script = workdir / "load.lua"
    script.write_text(WRK_SCRIPT)
    env = dict(os.environ, LOAD_METHOD=method, LOAD_PATH=path, LOAD_TOKEN=token, LOAD_BODY=body)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
               "-s", str(script), url]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    if out.stderr.strip():
        print(out.stderr.strip(), file=sys.stderr)
    data = json.loads(line[len("WRK_JSON "):])
    return Measure(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["bad_status"] + data["socket_errors"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


async def _run_httpx(url: str, path: str, method: str, token: str, body: str, connections: int,
                     duration: float, max_requests: int) -> Measure:
    import httpx

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=10) as client:

        async def one_client() -> None:
            nonlocal errors, issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                try:
                    if method == "POST":
                        content = body.replace("%d", str(issued))
                        r = await client.post(path, content=content, headers={"Content-Type": "application/json"})
                    else:
                        r = await client.get(path)
                    ok = 200 <= r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(connections)))
        seconds = time.perf_counter() - started
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (lambda q: 0.0)
    return Measure(len(latencies), seconds, errors, pick(0.50), pick(0.99))


def drive(client: str, url: str, path: str, method: str, token: str, body: str, args, workdir: Path) -> Measure:
    if client == "wrk":
        return run_wrk(url, path, method, token, body, args.connections, args.duration, workdir)
    return asyncio.run(
        _run_httpx(url, path, method, token, body, args.connections, args.duration, args.max_requests)
    )


# ---------------------------------------------------------------- redis cleanup


def cleanup_redis(redis_url: str, prefix: str, queue: str) -> int:
    """Delete every key of this run: ours under the prefix, RQ's for the queue and its jobs."""
    import redis
    from rq import Queue

    conn = redis.Redis.from_url(redis_url)
    deleted = 0
    q = Queue(queue, connection=conn)
    job_ids = q.get_job_ids()
    for start in range(0, len(job_ids), 1000):
        keys = [f"rq:job:{j}" for j in job_ids[start:start + 1000]]
        deleted += conn.delete(*keys) if keys else 0
    q.delete(delete_jobs=False)
    for pattern in (f"{prefix}*", f"rq:*:{queue}", f"rq:*:{queue}:*"):
        batch = []
        for key in conn.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += conn.delete(*batch)
                batch = []
        if batch:
            deleted += conn.delete(*batch)
    return deleted


# ---------------------------------------------------------------- process CPU


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_own_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A throwaway redis-server on a free loopback port, nothing saved to disk."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url, socket_timeout=1).ping():
                return process, url
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None,
                        help="use this Redis (a unique key prefix and queue, deleted afterwards); "
                             "default: a throwaway redis-server on a free port")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--max-requests", type=int, default=200_000, help="httpx client: requests per scenario")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    args = parser.parse_args(argv)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    if not (1 <= args.connections <= 1024 and 0 < args.duration <= 600 and 1 <= args.rounds <= 20):
        parser.error("connections in [1, 1024], duration in (0, 600], rounds in [1, 20]")
    if args.redis_url is None and not shutil.which("redis-server"):
        parser.error("no redis-server on PATH: give --redis-url")

    run_id = uuid.uuid4().hex[:12]
    prefix, queue = f"nacsbench-{run_id}:", f"nacsbench-{run_id}"
    token = "bench-" + uuid.uuid4().hex
    servers: list[Server] = []
    own_redis: subprocess.Popen | None = None
    deleted = 0
    with tempfile.TemporaryDirectory(prefix="nacs-load-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        data_dir.mkdir()
        dataset = data_dir / "clicks.parquet"
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"label": [0, 1] * 50, "f0": [str(i % 7) for i in range(100)]}), dataset)
        redis_url = args.redis_url
        if redis_url is None:
            own_redis, redis_url = start_own_redis(workdir)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            NACS_REDIS_URL=redis_url,
            NACS_REDIS_PREFIX=prefix,
            NACS_QUEUE=queue,
            NACS_API_KEYS=f"bench:{token}",
            NACS_ALLOWED_URIS=f"file://{data_dir}/",
            NACS_STORAGE_URI=str(workdir / "outputs"),
            NACS_MAX_ACTIVE_JOBS_PER_TENANT=str(10**9),
        )
        body = json.dumps({"dataset_uri": f"file://{dataset}", "ratio": 0.1, "method": "random",
                           "options": {"seed": 0}}).replace('"seed": 0', '"seed": %d')
        try:
            servers.append(start_server("ours", "service.main:create_app", env, workdir, app_dir=ROOT))
            servers.append(start_server("bare", "load:create_bare_app", env, workdir, app_dir=HERE))
            ours, bare = servers
            import httpx

            created = httpx.post(ours.base_url + "/jobs", content=body.replace("%d", "1"), timeout=10,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            if created.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {created.status_code}: {created.text[:500]}")
            job_id = created.json()["id"]

            scenarios = {
                "GET /jobs/{id}": (ours, f"/jobs/{job_id}", "GET", token, ""),
                "POST /jobs": (ours, "/jobs", "POST", token, body),
                "GET /bare (bare FastAPI)": (bare, "/bare", "GET", "", ""),
                "POST /bare (bare, JSON body)": (bare, "/bare", "POST", "", body),
            }
            warm_up = argparse.Namespace(**{**vars(args), "duration": 1, "max_requests": 200})
            for server, path, method, tok, b in scenarios.values():  # not measured
                drive(client, server.base_url, path, method, tok, b, warm_up, workdir)
            results: dict[str, list[Measure]] = {name: [] for name in scenarios}
            cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in scenarios}
            for round_no in range(args.rounds):
                for name, (server, path, method, tok, b) in scenarios.items():
                    before = cpu_seconds(server.process.pid), cpu_seconds(own_redis.pid) if own_redis else 0.0
                    m = drive(client, server.base_url, path, method, tok, b, args, workdir)
                    after = cpu_seconds(server.process.pid), cpu_seconds(own_redis.pid) if own_redis else 0.0
                    per_request = [(a - b_) * 1000 / max(m.requests, 1) for a, b_ in zip(after, before, strict=True)]
                    results[name].append(m)
                    cpu[name].append((per_request[0], per_request[1]))
                    print(f"round {round_no + 1}: {name:26s} {m.rps:9.0f} req/s  p50 {m.p50_ms:7.2f} ms  "
                          f"p99 {m.p99_ms:7.2f} ms  errors {m.errors}  server CPU {per_request[0]:.3f} ms/req",
                          file=sys.stderr)
        finally:
            for server in servers:
                server.stop()
            if own_redis is not None:
                own_redis.terminate()
                own_redis.wait(timeout=10)
            else:
                deleted = cleanup_redis(redis_url, prefix, queue)

    bare_name = "GET /bare (bare FastAPI)"
    bare_cpu = statistics.median(c[0] for c in cpu[bare_name])
    print()
    print(f"client {client}, {args.connections} connections, {args.rounds} x {args.duration:g} s per scenario, "
          f"uvicorn 1 process (uvloop, httptools), {os.cpu_count()} CPUs shared by servers, Redis and client; "
          f"Redis: {'own redis-server' if own_redis else redis_url}")
    print()
    print("| endpoint | requests/s | p50 ms | p99 ms | errors / requests | ours/bare (req/s, per round) "
          "| server CPU ms/request | Redis CPU ms/request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst = None
    ours_names = ("GET /jobs/{id}", "POST /jobs")
    total_errors = 0
    for name, ms in results.items():
        rps = statistics.median(m.rps for m in ms)
        errors, requests = sum(m.errors for m in ms), sum(m.requests for m in ms)
        total_errors += errors
        # Each round's figure against the bare endpoint's in the same round: the neighbours
        # share the machine's background load, which drifts between rounds.
        ratio = statistics.median(
            m.rps / b.rps if b.rps else 0.0 for m, b in zip(ms, results[bare_name], strict=True)
        )
        if name in ours_names:
            worst = ratio if worst is None else min(worst, ratio)
        server_cpu = statistics.median(c[0] for c in cpu[name])
        redis_cpu = f"{statistics.median(c[1] for c in cpu[name]):.3f}" if own_redis else "n/a"
        print(f"| `{name}` | {rps:,.0f} | {statistics.median(m.p50_ms for m in ms):.2f} | "
              f"{statistics.median(m.p99_ms for m in ms):.2f} | {errors} / {requests:,} | {ratio:.2f} | "
              f"{server_cpu:.3f} ({server_cpu / bare_cpu:.1f}x bare) | {redis_cpu} |")
    print()
    post_ratio = statistics.median(
        m.rps / b.rps if b.rps else 0.0
        for m, b in zip(results["POST /jobs"], results["POST /bare (bare, JSON body)"], strict=True)
    )
    print(f"`POST /jobs` against `POST /bare` (a bare endpoint reading the same JSON body): {post_ratio:.2f}")
    print()
    if own_redis is None:
        print(f"Redis keys of this run deleted afterwards: {deleted}")
    if client == "httpx":
        print("client httpx: the Python client itself limits requests/s here; "
              "trust the CPU columns, or install wrk for the ratios")
    met = worst is not None and worst >= 0.5 and total_errors == 0
    print(f"target (each endpoint >= 0.5 x bare requests/s, no errors): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
