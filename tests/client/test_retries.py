"""The retry table, at the transport level: what retries, how often, how long, with which key."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from nacs_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
)
from nacs_client._retry import RetryPolicy, parse_retry_after
from tests.client.fakes import BASE_URL, Recorder, ScriptedService, error_response, job_json

# random() == 0.5 makes the jitter factor 1 - 0.25 * 0.5 = 0.875.
JITTER = 0.875


def connect_error() -> Exception:
    return httpx.ConnectError("connection refused")


def read_timeout() -> Exception:
    return httpx.ReadTimeout("read timed out")


RETRYABLE = [
    pytest.param(
        lambda: error_response(429, "rate_limited", "slow down"), RateLimitError, id="429"
    ),
    pytest.param(
        lambda: error_response(502, "bad_gateway", "proxy"), InternalServerError, id="502"
    ),
    pytest.param(
        lambda: error_response(503, "unavailable", "redis down"), ServiceUnavailableError, id="503"
    ),
    pytest.param(
        lambda: error_response(504, "gateway_timeout", "slow"), InternalServerError, id="504"
    ),
    pytest.param(connect_error, APIConnectionError, id="ConnectError"),
    pytest.param(read_timeout, APITimeoutError, id="ReadTimeout"),
]

NOT_RETRYABLE = [
    pytest.param(400, BadRequestError, id="400"),
    pytest.param(401, AuthenticationError, id="401"),
    pytest.param(404, NotFoundError, id="404"),
    pytest.param(409, ConflictError, id="409"),
    pytest.param(413, PayloadTooLargeError, id="413"),
    pytest.param(422, BadRequestError, id="422"),
    pytest.param(500, InternalServerError, id="500"),
]


def make_client(service: ScriptedService, sleep: Recorder, **kwargs) -> Client:
    return Client(
        BASE_URL, "key", transport=service.transport, sleep=sleep, random=lambda: 0.5, **kwargs
    )


def make_async_client(service: ScriptedService, sleep: Recorder, **kwargs) -> AsyncClient:
    return AsyncClient(
        BASE_URL,
        "key",
        transport=service.transport,
        sleep=sleep.asleep,
        random=lambda: 0.5,
        **kwargs,
    )


@pytest.mark.parametrize("max_retries", [0, 1, 3])
@pytest.mark.parametrize(("failure", "error_class"), RETRYABLE)
def test_retryable_failures_are_tried_max_retries_plus_one_times(failure, error_class, max_retries):
    service = ScriptedService(failure())
    sleep = Recorder()
    with make_client(service, sleep, max_retries=max_retries) as client:
        with pytest.raises(error_class):
            client.jobs.get("job-1")
    assert len(service.requests) == max_retries + 1
    assert sleep.waits == pytest.approx([0.5 * 2**n * JITTER for n in range(max_retries)])


@pytest.mark.parametrize(("failure", "error_class"), RETRYABLE)
def test_a_retryable_failure_then_success_returns_the_answer(failure, error_class):
    service = ScriptedService(failure(), failure(), httpx.Response(200, json=job_json("job-1")))
    sleep = Recorder()
    with make_client(service, sleep, max_retries=3) as client:
        job = client.jobs.get("job-1")
    assert job.id == "job-1"
    assert len(service.requests) == 3
    assert sleep.waits == pytest.approx([0.5 * JITTER, 1.0 * JITTER])


@pytest.mark.parametrize(("status", "error_class"), NOT_RETRYABLE)
def test_client_errors_and_500_are_not_retried(status, error_class):
    service = ScriptedService(error_response(status, "some_code", "what went wrong"))
    sleep = Recorder()
    with make_client(service, sleep, max_retries=3) as client:
        with pytest.raises(error_class) as raised:
            client.jobs.get("job-1")
    assert len(service.requests) == 1
    assert sleep.waits == []
    assert raised.value.status_code == status
    assert raised.value.code == "some_code"
    assert raised.value.message == "what went wrong"


def test_a_transport_error_that_is_not_transient_is_not_retried():
    service = ScriptedService(httpx.UnsupportedProtocol("no such scheme"))
    sleep = Recorder()
    with make_client(service, sleep) as client, pytest.raises(APIConnectionError):
        client.jobs.get("job-1")
    assert len(service.requests) == 1


def test_backoff_doubles_up_to_the_cap():
    service = ScriptedService(error_response(503))
    sleep = Recorder()
    with (
        make_client(service, sleep, max_retries=6) as client,
        pytest.raises(ServiceUnavailableError),
    ):
        client.jobs.get("job-1")
    assert sleep.waits == pytest.approx([x * JITTER for x in (0.5, 1, 2, 4, 8, 8)])


def test_jitter_comes_from_the_injected_random_source():
    draws = iter([0.0, 1.0, 0.2])
    service = ScriptedService(error_response(503))
    sleep = Recorder()
    client = Client(BASE_URL, transport=service.transport, sleep=sleep, random=lambda: next(draws))
    with client, pytest.raises(ServiceUnavailableError):
        client.jobs.get("job-1")
    assert sleep.waits == pytest.approx([0.5 * 1.0, 1.0 * 0.75, 2.0 * 0.95])


def test_retry_after_in_seconds_replaces_the_backoff():
    service = ScriptedService(
        error_response(429, "rate_limited", "later", retry_after="7"),
        error_response(503, "unavailable", "later", retry_after="0"),
        httpx.Response(200, json=job_json()),
    )
    sleep = Recorder()
    with make_client(service, sleep) as client:
        client.jobs.get("job-1")
    assert sleep.waits == [7.0, 0.0]


def test_retry_after_as_an_http_date_is_honoured():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    service = ScriptedService(
        error_response(503, retry_after=format_datetime(when, usegmt=True)),
        httpx.Response(200, json=job_json()),
    )
    sleep = Recorder()
    with make_client(service, sleep) as client:
        client.jobs.get("job-1")
    # The header has whole seconds, so the wait is at most a second shorter than 30 s.
    assert len(sleep.waits) == 1
    assert 28.0 <= sleep.waits[0] <= 30.0


def test_retry_after_longer_than_the_cap_is_not_waited_for():
    service = ScriptedService(
        error_response(429, "rate_limited", "come back tomorrow", retry_after="86400")
    )
    sleep = Recorder()
    with make_client(service, sleep) as client, pytest.raises(RateLimitError) as raised:
        client.jobs.get("job-1")
    assert len(service.requests) == 1
    assert sleep.waits == []
    assert raised.value.response.headers["retry-after"] == "86400"


def test_unreadable_retry_after_falls_back_to_the_backoff():
    service = ScriptedService(
        error_response(503, retry_after="soon"), httpx.Response(200, json=job_json())
    )
    sleep = Recorder()
    with make_client(service, sleep) as client:
        client.jobs.get("job-1")
    assert sleep.waits == pytest.approx([0.5 * JITTER])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Sun, 29 Nov 2026 20:00:10 GMT", 10.0),
        ("Sun, 29 Nov 2026 19:59:00 GMT", 0.0),
        ("", None),
        ("nan", None),
        ("tomorrow", None),
        (None, None),
    ],
)
def test_parse_retry_after(value, expected):
    now_s = datetime(2026, 11, 29, 20, 0, 0, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after(value, now_s=now_s) == expected


def test_retry_policy_rejects_negative_max_retries():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="max_retries"):
        Client(BASE_URL, max_retries=-1)


def created() -> httpx.Response:
    return httpx.Response(202, json=job_json(), headers={"Location": "/jobs/job-1"})


def test_create_sends_one_idempotency_key_on_every_retry():
    service = ScriptedService(connect_error(), error_response(503), read_timeout(), created())
    sleep = Recorder()
    with make_client(service, sleep) as client:
        job = client.jobs.create("file:///data/train.parquet", ratio=0.1)
    assert job.id == "job-1"
    keys = [request.headers["Idempotency-Key"] for request in service.requests]
    assert len(keys) == 4
    assert len(set(keys)) == 1
    assert uuid.UUID(keys[0]).version == 4
    assert len(set(map(bytes, (r.content for r in service.requests)))) == 1


def test_each_create_call_gets_its_own_key_unless_given():
    service = ScriptedService(created())
    with make_client(service, Recorder()) as client:
        client.jobs.create("file:///a.parquet", ratio=0.1)
        client.jobs.create("file:///a.parquet", ratio=0.1)
        client.jobs.create("file:///a.parquet", ratio=0.1, idempotency_key="nightly-2026-11-29")
    keys = [request.headers["Idempotency-Key"] for request in service.requests]
    assert keys[0] != keys[1]
    assert keys[2] == "nightly-2026-11-29"


def test_requests_carry_the_key_and_base_url():
    service = ScriptedService(httpx.Response(200, json=job_json()))
    with Client(BASE_URL + "/", "secret", transport=service.transport) as client:
        client.jobs.get("job-1")
    request = service.requests[0]
    assert str(request.url) == f"{BASE_URL}/jobs/job-1"
    assert request.headers["Authorization"] == "Bearer secret"


def test_base_url_and_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NACS_BASE_URL", "http://env.test:9000")
    monkeypatch.setenv("NACS_API_KEY", "from-env")
    service = ScriptedService(httpx.Response(200, json=job_json()))
    with Client(transport=service.transport) as client:
        client.jobs.get("job-1")
    assert str(service.requests[0].url) == "http://env.test:9000/jobs/job-1"
    assert service.requests[0].headers["Authorization"] == "Bearer from-env"


def test_no_key_sends_no_authorization_header():
    service = ScriptedService(httpx.Response(200, json=job_json()))
    with Client(BASE_URL, transport=service.transport) as client:
        client.jobs.get("job-1")
    assert "Authorization" not in service.requests[0].headers


# --- the async client: the same table ----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("failure", "error_class"), RETRYABLE)
async def test_async_retryable_failures(failure, error_class):
    service = ScriptedService(failure())
    sleep = Recorder()
    async with make_async_client(service, sleep, max_retries=2) as client:
        with pytest.raises(error_class):
            await client.jobs.get("job-1")
    assert len(service.requests) == 3
    assert sleep.waits == pytest.approx([0.5 * JITTER, 1.0 * JITTER])


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "error_class"), NOT_RETRYABLE)
async def test_async_client_errors_are_not_retried(status, error_class):
    service = ScriptedService(error_response(status, "some_code", "what went wrong"))
    sleep = Recorder()
    async with make_async_client(service, sleep) as client:
        with pytest.raises(error_class) as raised:
            await client.jobs.get("job-1")
    assert len(service.requests) == 1
    assert sleep.waits == []
    assert (raised.value.code, raised.value.message) == ("some_code", "what went wrong")


@pytest.mark.anyio
async def test_async_retry_after_and_one_idempotency_key():
    service = ScriptedService(
        error_response(429, retry_after="3"), connect_error(), error_response(502), created()
    )
    sleep = Recorder()
    async with make_async_client(service, sleep) as client:
        job = await client.jobs.create("file:///data/train.parquet", size=100)
    assert job.status == "queued"
    assert sleep.waits == pytest.approx([3.0, 1.0 * JITTER, 2.0 * JITTER])
    assert len({request.headers["Idempotency-Key"] for request in service.requests}) == 1


@pytest.mark.anyio
async def test_async_client_accepts_a_plain_function_as_sleep():
    service = ScriptedService(error_response(503), httpx.Response(200, json=job_json()))
    sleep = Recorder()
    client = AsyncClient(BASE_URL, transport=service.transport, sleep=sleep, random=lambda: 0.0)
    async with client:
        await client.jobs.get("job-1")
    assert sleep.waits == [0.5]


def test_every_status_error_is_an_api_status_error():
    for error_class in (
        BadRequestError,
        RateLimitError,
        ServiceUnavailableError,
        InternalServerError,
    ):
        assert issubclass(error_class, APIStatusError)
    assert issubclass(APITimeoutError, APIConnectionError)
