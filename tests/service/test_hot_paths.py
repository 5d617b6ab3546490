"""``service.hot_paths``: the same answers and metrics as FastAPI's routes, for the requests it takes.

Each request goes through two apps on their own Redis keys: the app as built, and the same app
without ``HotPaths`` (every request through FastAPI's routes and middlewares, as before the
hot path existed). Status, headers, body and metrics must match, job ids and times aside.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.hot_paths import HotPaths
from service.main import create_app
from service.metrics import RequestMetrics
from service.settings import Settings
from tests.stack import TENANT_KEYS, free_port

ALPHA = (b"authorization", f"Bearer {TENANT_KEYS['alpha']}".encode())
BETA = (b"authorization", f"Bearer {TENANT_KEYS['beta']}".encode())
JSON = (b"content-type", b"application/json")


@dataclass
class Call:
    """One request: ``{job}`` in the path stands for the first job the app created."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    disconnect: bool = False
    root_path: str = ""


def post(payload: Any, *headers: tuple[bytes, bytes], length: bytes | None = None) -> Call:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sized = [(b"content-length", str(len(raw)).encode() if length is None else length)]
    return Call("POST", "/jobs", [*headers, *sized], [raw])


def without_hot_paths(app: FastAPI) -> FastAPI:
    """The same app with every request served by FastAPI's routes."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HotPaths]
    return app


async def _exchange(app: Any, calls: list[Call], lifespan: Any) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    answers = []
    first_job = ""
    async with lifespan:
        for call in calls:
            pending = [
                {"type": "http.request", "body": chunk, "more_body": i + 1 < len(call.chunks)}
                for i, chunk in enumerate(call.chunks or [b""])
            ]
            if call.disconnect:
                pending = [{"type": "http.disconnect"}]

            async def receive(pending: list[dict[str, Any]] = pending) -> dict[str, Any]:
                return pending.pop(0) if pending else {"type": "http.disconnect"}

            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                sent.append(message)

            path = call.path.replace("{job}", first_job)
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": call.method,
                "scheme": "http",
                "path": call.root_path + path,
                "raw_path": (call.root_path + path).encode(),
                "root_path": call.root_path,
                "query_string": b"",
                "headers": [(b"host", b"testserver"), *call.headers],
                "client": ("127.0.0.1", 50000),
                "server": ("testserver", 80),
            }
            try:
                await app(scope, receive, send)
            except Exception:  # noqa: BLE001 - the 500 already went out, as a server would send it
                pass
            if not sent:
                answers.append((0, [], b""))
                continue
            status, headers = sent[0]["status"], list(sent[0]["headers"])
            body = b"".join(m.get("body", b"") for m in sent[1:])
            if status == 202 and not first_job:
                first_job = json.loads(body)["id"]
            answers.append((status, headers, body))
    return answers


def exchange(app: FastAPI, calls: list[Call]) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    """(status, headers, body) of each call sent to ``app`` in turn; status 0 when nothing was sent."""
    return asyncio.run(_exchange(app, calls, app.router.lifespan_context(app)))


def normalised(answers: list[tuple[int, list[tuple[bytes, bytes]], bytes]]) -> list[tuple[Any, ...]]:
    """Answers with job ids numbered in order of creation and times blanked; Content-Length checked."""
    ids: list[bytes] = []
    out = []
    for status, headers, body in answers:
        if status == 202:
            ids.append(json.loads(body)["id"].encode())
        for number, job_id in enumerate(ids):
            body = body.replace(job_id, f"<job {number}>".encode())
            headers = [(k, v.replace(job_id, f"<job {number}>".encode())) for k, v in headers]
        sizes = [v for k, v in headers if k == b"content-length"]
        assert sizes == [] or int(sizes[0]) == len(answers[len(out)][2]), (status, headers)
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        content = json.loads(body) if body else None
        for moment in ("created_at", "finished_at"):
            if isinstance(content, dict) and content.get(moment):
                content[moment] = "<time>"
        out.append((status, headers, content))
    return out


def request_counts(app: FastAPI) -> dict[tuple[str, ...], float]:
    """The request counter and latency-histogram counts, by their labels."""
    counts = {}
    for metric in app.state.metrics_registry.collect():
        for sample in metric.samples:
            if sample.name in ("nacs_http_requests_total", "nacs_http_request_duration_seconds_count"):
                counts[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return counts


def compare(make_settings: Callable[..., Settings], calls: list[Call], **overrides: Any) -> list[tuple[Any, ...]]:
    """Send ``calls`` through the app and through the app without ``HotPaths``; assert the same answers
    and metrics, each request counted once. Returns the answers."""
    fast_app = create_app(make_settings(**overrides))
    slow_app = without_hot_paths(create_app(make_settings(**overrides)))
    fast = normalised(exchange(fast_app, calls))
    slow = normalised(exchange(slow_app, calls))
    for call, fast_answer, slow_answer in zip(calls, fast, slow, strict=True):
        assert fast_answer == slow_answer, (call, fast_answer, slow_answer)
    fast_counts, slow_counts = request_counts(fast_app), request_counts(slow_app)
    assert fast_counts == slow_counts
    assert sum(v for k, v in fast_counts.items() if k[0] == "nacs_http_requests_total") == len(calls)
    return fast


def payload(dataset: Path, **extra: Any) -> dict[str, Any]:
    return {"dataset_uri": str(dataset), "ratio": 0.1, "method": "random"} | extra


def test_submissions_answer_as_the_route_does(make_settings, dataset: Path, tmp_path: Path) -> None:
    calls = [
        post(payload(dataset), ALPHA, JSON),
        post(payload(dataset, ratio=0.2), ALPHA),  # no Content-Type: read as JSON
        post(payload(dataset), JSON),  # no key
        post(payload(dataset), (b"authorization", b"Bearer wrong-key-123456"), JSON),
        post(payload(dataset), (b"authorization", b"Basic abc"), JSON),
        post(b'{"dataset_uri": ', ALPHA, JSON),  # malformed JSON: 400
        post(b"", ALPHA, JSON),  # empty body: 422
        post(payload(dataset), ALPHA, (b"content-type", b"text/plain")),
        post(payload(dataset), ALPHA, (b"content-type", b"application/vnd.nacs+json")),
        post(payload(dataset, ratio=2.0, method="nope"), ALPHA, JSON),
        post(payload(dataset, colour="red"), ALPHA, JSON),
        post(payload(dataset, dataset_uri=str(tmp_path / "elsewhere.parquet")), ALPHA, JSON),
        post(payload(dataset, dataset_uri="ftp://host/x"), ALPHA, JSON),
        post(payload(dataset), ALPHA, JSON, (b"idempotency-key", b"k-1")),
        post(payload(dataset), ALPHA, JSON, (b"idempotency-key", b"k-1")),  # replay: 200, same job
        post(payload(dataset, ratio=0.2), ALPHA, JSON, (b"idempotency-key", b"k-1")),  # 409
        post(payload(dataset), ALPHA, JSON, (b"idempotency-key", b" ")),
        post(payload(dataset), ALPHA, JSON, (b"idempotency-key", b"k" * 256)),
        post(payload(dataset), ALPHA, ALPHA, JSON),  # a repeated header: the first counts
        post(payload(dataset), (b"authorization", b"Bearer wrong-key-123456"), ALPHA, JSON),
        post(payload(dataset, feature_columns=[f"c{i}" for i in range(500)]), ALPHA, JSON),  # 413 by length
        post(payload(dataset), ALPHA, JSON, length=b"many"),  # 400: not a number
        Call("POST", "/jobs", [ALPHA, JSON], [b'{"dataset_uri": "', b"x" * 3000, b'"}']),  # 413 as sent
        Call("POST", "/jobs", [ALPHA, JSON], [json.dumps(payload(dataset))[:20].encode(), json.dumps(payload(dataset))[20:].encode()]),
        Call("POST", "/jobs", [ALPHA, JSON], disconnect=True),  # no answer at all
    ]
    answers = compare(make_settings, calls, max_body_bytes=2048)
    statuses = [status for status, _, _ in answers]
    assert statuses == [202, 202, 401, 401, 401, 400, 422, 422, 202, 422, 422, 422, 422, 202, 200, 409, 422, 422, 202, 401, 413, 400, 413, 202, 0]
    location = dict(answers[0][1])[b"location"]
    assert location == b"/jobs/<job 0>" and answers[0][2]["id"] == "<job 0>"


def test_active_job_limit_answers_as_the_route_does(make_settings, dataset: Path) -> None:
    calls = [post(payload(dataset), ALPHA, JSON), post(payload(dataset), ALPHA, JSON)]
    answers = compare(make_settings, calls, max_active_jobs_per_tenant=1)
    assert [status for status, _, _ in answers] == [202, 429]
    assert (b"retry-after", b"10") in answers[1][1]


def test_reads_answer_as_the_route_does(make_settings, dataset: Path) -> None:
    calls = [
        post(payload(dataset), ALPHA, JSON),
        Call("GET", "/jobs/{job}", [ALPHA]),
        Call("GET", "/jobs/{job}", []),
        Call("GET", "/jobs/{job}", [(b"authorization", b"Bearer wrong-key-123456")]),
        Call("GET", "/jobs/{job}", [BETA]),  # another tenant's job: 404
        Call("GET", "/jobs/0123456789abcdef0123456789abcdef", [ALPHA]),
        Call("GET", "/jobs/not-a-job", [ALPHA]),
        Call("GET", "/jobs/" + "a" * 64, [ALPHA]),
        Call("GET", "/jobs/" + "a" * 65, [ALPHA]),  # FastAPI's path rule: 422
        Call("GET", "/jobs/{job}/result", [ALPHA]),
        Call("HEAD", "/jobs/{job}", [ALPHA]),
        Call("GET", "/jobs/", [ALPHA]),
        Call("GET", "/jobs/{job}", [ALPHA], root_path="/api"),
        Call("POST", "/jobs/{job}/cancel", [ALPHA]),
        Call("GET", "/jobs/{job}", [ALPHA]),  # now cancelled
    ]
    answers = compare(make_settings, calls)
    assert [status for status, _, _ in answers][:10] == [202, 200, 401, 401, 404, 404, 404, 404, 422, 409]
    assert answers[1][2]["id"] == "<job 0>" and answers[-1][2]["status"] == "cancelled"
    assert (b"www-authenticate", b"Bearer") in answers[2][1]


def test_redis_down_answers_as_the_route_does(make_settings, dataset: Path) -> None:
    calls = [post(payload(dataset), ALPHA, JSON), Call("GET", "/jobs/abc", [ALPHA])]
    answers = compare(make_settings, calls, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    assert [(status, content["error"]["code"]) for status, _, content in answers] == [(503, "redis_unavailable")] * 2
    assert all((b"retry-after", b"5") in headers for _, headers, _ in answers)


def test_only_the_two_requests_take_the_hot_path(make_settings, dataset: Path) -> None:
    """The hot path answers POST /jobs and GET /jobs/{job_id} itself and passes on everything else."""
    app = create_app(make_settings())
    passed_on: list[tuple[str, str]] = []

    async def fallback(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed_on.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    hot = HotPaths(fallback, state=app.state, metrics=RequestMetrics(CollectorRegistry()))
    calls = [
        post(payload(dataset), ALPHA, JSON),
        Call("GET", "/jobs/{job}", [ALPHA]),
        Call("GET", "/jobs/unknown", [ALPHA]),
        Call("GET", "/jobs/" + "a" * 65, [ALPHA]),
        Call("GET", "/jobs/{job}/result", [ALPHA]),
        Call("HEAD", "/jobs/{job}", [ALPHA]),
        Call("GET", "/jobs", [ALPHA]),
        Call("PUT", "/jobs", [ALPHA]),
        Call("POST", "/jobs/", [ALPHA]),
        Call("GET", "/jobs/{job}", [ALPHA], root_path="/api"),
        Call("GET", "/healthz"),
    ]
    answers = asyncio.run(_exchange(hot, calls, app.router.lifespan_context(app)))
    assert [status for status, _, _ in answers] == [202, 200, 404] + [299] * 8
    assert [method for method, _ in passed_on] == ["GET", "GET", "HEAD", "GET", "PUT", "POST", "GET", "GET"]
