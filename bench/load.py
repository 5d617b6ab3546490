"""Service load: latency and server CPU of POST /jobs and GET /jobs/{id} under concurrent clients.

Starts, on loopback, a throwaway ``redis-server`` on a free port (or, with ``--redis-url``,
a fresh key prefix and queue on that Redis) and the API as users run it,
``nacs serve --workers N`` (uvicorn, N worker processes, access log off), with a benchmark
tenant and no job workers (submitted jobs just queue). Then drives each route for
``--duration`` seconds with ``--connections`` concurrent keep-alive clients, each sending
its next request ``--think-ms`` after the last one was answered (0: at once, which
measures the server at saturation, where latency is the queue in front of it), in
``--rounds`` interleaved rounds:

- ``POST /jobs``, each request a unique body (a new job each);
- ``GET /jobs/{id}`` of an existing job.

It prints, per route, requests/s, p50 and p99 latency (the medians over the rounds),
errors (any response other than 2xx, and socket errors) and the server's CPU time per
request (all its processes), which the machine's other load disturbs less than latency.
Exit status 0 when both routes answer with no error and a p99 under ``--p99-ms``.

The load generator is ``wrk`` (one thread; a Lua script makes each POST body unique and
counts non-2xx responses) when it is on PATH, else an ``httpx.AsyncClient`` with one task
per connection (slower: it then measures the client as much as the server). It shares
the machine's cores with the servers.

    .venv/bin/python bench/load.py                  # 64 clients, nacs serve --workers 2
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

ROOT = Path(__file__).resolve().parents[1]

WRK_SCRIPT = r"""
local method = os.getenv("LOAD_METHOD")
local path = os.getenv("LOAD_PATH")
local token = os.getenv("LOAD_TOKEN")
local template = os.getenv("LOAD_BODY")     -- POST only; %d is replaced by a counter
local think_ms = tonumber(os.getenv("LOAD_THINK_MS"))
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
  headers["Authorization"] = "Bearer " .. token
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

function delay()
  return think_ms
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    if bad <= 3 then
      io.stderr:write("status " .. status .. ": " .. string.sub(body, 1, 300) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local bad_total = 0
  for _, t in ipairs(threads) do bad_total = bad_total + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bad_status": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, bad_total, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and every process below it (Linux /proc)."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A throwaway redis-server on a free loopback port, nothing saved to disk."""
    import redis

    port = free_port()
    command = [
        shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
        "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def start_api(env: dict[str, str], workers: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    """``nacs serve --workers N`` on a free loopback port; returns once it answers."""
    import httpx

    port = free_port()
    log = open(workdir / "api.log", "wb")  # noqa: SIM115 - the server's whole life
    command = [
        sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--log-level", "warning",
    ]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"the API did not start:\n{(workdir / 'api.log').read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def run_wrk(url: str, path: str, method: str, token: str, body: str, connections: int,
            duration: float, think_ms: float, workdir: Path) -> Measure:
    script = workdir / "load.lua"
    script.write_text(WRK_SCRIPT)
    env = dict(os.environ, LOAD_METHOD=method, LOAD_PATH=path, LOAD_TOKEN=token, LOAD_BODY=body)
    env["LOAD_THINK_MS"] = str(round(think_ms))
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(script), url,
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    if out.stderr.strip():
        print(out.stderr.strip(), file=sys.stderr)
    data = json.loads(line[len("WRK_JSON ") :])
    errors = data["bad_status"] + data["socket_errors"]
    seconds = data["duration_us"] / 1e6
    p50_ms, p99_ms = data["p50_us"] / 1000, data["p99_us"] / 1000
    return Measure(data["requests"], seconds, errors, p50_ms, p99_ms)


async def _run_httpx(url: str, path: str, method: str, token: str, body: str,
                     connections: int, duration: float, think_ms: float) -> Measure:
    import httpx

    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = issued = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    options = {"headers": headers, "limits": limits, "timeout": 10}
    async with httpx.AsyncClient(base_url=url, **options) as client:

        async def one_client() -> None:
            nonlocal errors, issued
            while time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                try:
                    if method == "POST":
                        content = body.replace("%d", str(issued))
                        json_type = {"Content-Type": "application/json"}
                        response = await client.post(path, content=content, headers=json_type)
                    else:
                        response = await client.get(path)
                    ok = 200 <= response.status_code < 300
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok
                await asyncio.sleep(think_ms / 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(connections)))
        seconds = time.perf_counter() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return Measure(len(latencies), seconds, errors, quantile(0.50), quantile(0.99))


def drive(client: str, url: str, path: str, method: str, token: str, body: str,
          args: argparse.Namespace, duration: float, workdir: Path) -> Measure:
    clients, think_ms = args.connections, args.think_ms
    if client == "wrk":
        return run_wrk(url, path, method, token, body, clients, duration, think_ms, workdir)
    measure = _run_httpx(url, path, method, token, body, clients, duration, think_ms)
    return asyncio.run(measure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis (a unique key prefix and queue); default: a throwaway redis-server",
    )
    parser.add_argument("--workers", type=int, default=2, help="nacs serve --workers")
    parser.add_argument("--connections", type=int, default=64, help="concurrent clients")
    parser.add_argument("--think-ms", type=float, default=100.0,
                        help="each client's pause between an answer and its next request")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per route and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="the p99 target")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    args = parser.parse_args(argv)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    if not (1 <= args.connections <= 1024 and 0 < args.duration <= 600 and 1 <= args.rounds <= 20):
        parser.error("connections in [1, 1024], duration in (0, 600], rounds in [1, 20]")
    if args.redis_url is None and not shutil.which("redis-server"):
        parser.error("no redis-server on PATH: give --redis-url")

    run_id = uuid.uuid4().hex[:12]
    token = "bench-" + uuid.uuid4().hex
    redis_process = api = None
    with tempfile.TemporaryDirectory(prefix="nacs-load-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        dataset = workdir / "data" / "clicks.parquet"
        import pyarrow as pa
        import pyarrow.parquet as pq

        labels, values = [0, 1] * 50, [str(i % 7) for i in range(100)]
        pq.write_table(pa.table({"label": labels, "f0": values}), dataset)
        try:
            redis_url = args.redis_url
            if redis_url is None:
                redis_process, redis_url = start_redis(workdir)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NACS_")} | {
                "NACS_REDIS_URL": redis_url,
                "NACS_REDIS_PREFIX": f"nacsbench-{run_id}:",
                "NACS_QUEUE": f"nacsbench-{run_id}",
                "NACS_API_KEYS": f"bench:{token}",
                "NACS_ALLOWED_URIS": f"file://{workdir / 'data'}/",
                "NACS_STORAGE_URI": str(workdir / "outputs"),
                "NACS_MAX_ACTIVE_JOBS_PER_TENANT": str(10**9),
            }
            api, url = start_api(env, args.workers, workdir)
            body = json.dumps({"dataset_uri": f"file://{dataset}", "ratio": 0.1,
                               "method": "random", "options": {"seed": 0}})
            body = body.replace('"seed": 0', '"seed": %d')
            import httpx

            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            created = httpx.post(url + "/jobs", content=body.replace("%d", "1"), headers=headers)
            if created.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {created.status_code}: {created.text}")
            routes = {
                "POST /jobs": ("/jobs", "POST", body),
                "GET /jobs/{id}": (f"/jobs/{created.json()['id']}", "GET", ""),
            }
            for path, method, text in routes.values():  # warm-up, not measured
                drive(client, url, path, method, token, text, args, 1, workdir)
            results: dict[str, list[tuple[Measure, float]]] = {name: [] for name in routes}
            for round_no in range(args.rounds):
                for name, (path, method, text) in routes.items():
                    before = cpu_seconds(api.pid)
                    m = drive(client, url, path, method, token, text, args, args.duration,
                              workdir)
                    cpu_ms = (cpu_seconds(api.pid) - before) * 1000 / max(m.requests, 1)
                    results[name].append((m, cpu_ms))
                    print(f"round {round_no + 1}: {name:15s} {m.rps:7.0f} req/s  "
                          f"p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  errors {m.errors}  "
                          f"server CPU {cpu_ms:.3f} ms/request", file=sys.stderr)
        finally:
            if api is not None:
                stop(api)
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait(timeout=10)

    print(f"\nnacs serve --workers {args.workers}; client {client}, {args.connections} "
          f"connections, {args.think_ms:g} ms between an answer and the next request, "
          f"{args.rounds} x {args.duration:g} s per route; {os.cpu_count()} CPUs shared by "
          f"the API, Redis and the client\n")
    print("| route | requests/s | p50 ms | p99 ms | errors / requests | server CPU ms/request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    met = True
    for name, runs in results.items():
        measures = [m for m, _ in runs]
        p99 = statistics.median(m.p99_ms for m in measures)
        errors, requests = sum(m.errors for m in measures), sum(m.requests for m in measures)
        met &= errors == 0 and p99 < args.p99_ms
        print(f"| `{name}` | {statistics.median(m.rps for m in measures):,.0f} | "
              f"{statistics.median(m.p50_ms for m in measures):.1f} | {p99:.1f} | "
              f"{errors} / {requests:,} | {statistics.median(c for _, c in runs):.3f} |")
    print(f"\ntarget (p99 under {args.p99_ms:g} ms, no errors): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
