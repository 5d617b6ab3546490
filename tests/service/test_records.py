"""The API's fast paths: records read over one pipelined connection, jobs shown without models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.exceptions

from service.jobs import public_job, to_public
from service.records import AsyncRecords, pipelined_target
from tests.stack import DEFAULT_REDIS_URL, delete_keys, free_port, unique_name
from worker.queueing import JobStore, Script, connect
from worker.settings import WorkerSettings

REQUEST = {"dataset_uri": "file:///data/x.parquet", "ratio": 0.1, "method": "random", "output_uri": "file:///out"}


@pytest.fixture
def store() -> Iterator[JobStore]:
    name = unique_name("records")
    settings = WorkerSettings(redis_url=DEFAULT_REDIS_URL, redis_prefix=f"{name}:", queue=name)
    yield JobStore(connect(DEFAULT_REDIS_URL), settings)
    delete_keys(DEFAULT_REDIS_URL, settings.redis_prefix, settings.queue)


def test_concurrent_reads_each_get_their_own_record(store: JobStore) -> None:
    ids = [store.create("alpha", REQUEST | {"ratio": 0.01 * (i + 1)})[0]["id"] for i in range(40)]

    async def read_all() -> list[Any]:
        reader = AsyncRecords(DEFAULT_REDIS_URL, store.prefix)
        try:
            wanted = ids + ["0" * 32] + ids[::-1]
            return await asyncio.gather(*(reader.get(job_id) for job_id in wanted))
        finally:
            await reader.aclose()

    records = asyncio.run(read_all())
    assert [r["id"] for r in records[:40]] == ids
    assert records[40] is None
    assert [r["id"] for r in records[41:]] == ids[::-1]
    assert records[0] == store.get(ids[0])


def test_a_new_event_loop_gets_a_new_connection(store: JobStore) -> None:
    job_id = store.create("alpha", REQUEST)[0]["id"]
    reader = AsyncRecords(DEFAULT_REDIS_URL, store.prefix)
    for _ in range(2):
        assert asyncio.run(reader.get(job_id))["id"] == job_id


def test_other_databases_and_urls_left_to_redis_asyncio(store: JobStore) -> None:
    key_prefix = unique_name("records-db") + ":"
    other_db = redis.Redis.from_url(DEFAULT_REDIS_URL.rsplit("/", 1)[0] + "/3")
    other_db.set(key_prefix + "job:abc", b'{"id": "abc"}', ex=60)
    try:
        for url in (DEFAULT_REDIS_URL.rsplit("/", 1)[0] + "/3", DEFAULT_REDIS_URL.rsplit("/", 1)[0] + "/3?health_check_interval=5"):
            assert asyncio.run(AsyncRecords(url, key_prefix).get("abc")) == {"id": "abc"}, url
    finally:
        other_db.delete(key_prefix + "job:abc")
        other_db.close()


def test_urls_the_pipelined_reader_serves() -> None:
    assert pipelined_target("redis://h:7000/2") == {"host": "h", "port": 7000, "db": 2, "username": None, "password": None}
    assert pipelined_target("redis://:s%40cret@h")["password"] == "s@cret"
    assert pipelined_target("redis://user:pw@h/0")["username"] == "user"
    assert pipelined_target("unix:///run/redis.sock?db=1") == {"path": "/run/redis.sock", "db": 1}
    for other in ("rediss://h:6380/0", "redis://h/0?socket_timeout=3", "redis://h/notadb"):
        assert pipelined_target(other) is None, other


def test_refused_connection_is_a_redis_connection_error() -> None:
    reader = AsyncRecords(f"redis://127.0.0.1:{free_port()}/0", "p:", timeout_s=0.5)
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(reader.get("abc"))


async def _serve(handler: Any) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"redis://127.0.0.1:{port}/0"


def test_silent_server_times_out_and_the_next_read_reconnects() -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readline()
        if len(connections) == 2:  # the second connection answers, in two pieces
            await reader.readexactly(len(b"$3\r\nGET\r\n$8\r\np:job:ab\r\n"))
            writer.write(b"$12\r\n{\"id\": ")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b'"ab"}\r\n')
        await reader.read()

    async def scenario() -> Any:
        server, url = await _serve(handler)
        records = AsyncRecords(url, "p:", timeout_s=1, read_timeout_s=0.3)
        with pytest.raises(redis.exceptions.TimeoutError):
            await records.get("ab")
        found = await records.get("ab")
        await records.aclose()
        server.close()
        return found

    assert asyncio.run(scenario()) == {"id": "ab"}
    assert len(connections) == 2


def test_error_reply_and_lost_connection_are_redis_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
        await reader.readline()
        writer.close()

    async def scenario() -> None:
        server, url = await _serve(handler)
        records = AsyncRecords(url, "p:", timeout_s=1, read_timeout_s=2)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await records.get("ab")
        with pytest.raises(redis.exceptions.ConnectionError):
            await records.get("cd")
        server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"status": "running", "started_at": "2026-01-01T00:00:00.000Z", "attempts": 1,
         "progress": {"phase": "selecting", "fraction": 0.25, "message": "round 1 of 3"}},
        {"status": "succeeded", "finished_at": "2026-01-01T00:01:00.000Z", "attempts": 1,
         "progress": {"phase": "done", "fraction": 1, "message": "done"},
         "result": {"output_uri": "file:///o", "coreset_uri": "file:///o/coreset.parquet",
                    "manifest_uri": "file:///o/manifest.json", "size": 10, "rows_in": 100}},
        {"status": "failed", "error": {"code": "labels_not_binary", "message": "label: 2 is not 0/1"}},
        {"cancel_requested": True, "cancel_requested_at": "2026-01-01T00:00:01.000Z"},
    ],
)
def test_public_job_is_the_model_dump(store: JobStore, changes: dict[str, Any]) -> None:
    from worker.spec import JobRequest

    accepted = JobRequest.model_validate(REQUEST).model_dump(mode="json")
    record = store.create("alpha", accepted)[0] | changes
    fast = public_job(record)
    assert fast == to_public(record).model_dump(mode="json")
    assert list(fast) == list(to_public(record).model_dump(mode="json"))
    assert "tenant" not in fast and "body_hash" not in fast


@pytest.mark.parametrize("query", ["", "?health_check_interval=5"])  # pipelined, then redis.asyncio
def test_scripts(query: str) -> None:
    prefix = unique_name("records-script") + ":"
    url = DEFAULT_REDIS_URL + query
    # A source of its own (the prefix is unique), so Redis cannot hold it yet: the first call is an EVAL.
    script = Script(f"-- {prefix}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    listing = Script(f"-- {prefix}\nreturn {{ARGV[1], tonumber(ARGV[2]), redis.call('GET', KEYS[1])}}")

    async def scenario() -> list[Any]:
        records = AsyncRecords(url, prefix)
        try:
            first = await records.script(script, [prefix + "a"], [40])
            second = await records.script(script, [prefix + "a"], [2])
            mixed = await records.script(listing, [prefix + "a"], ["text", 1.5])
            with pytest.raises(redis.exceptions.ResponseError):
                await records.script(Script("return redis.call('SADD', KEYS[1], 'x')"), [prefix + "a"], [])  # not a set
            return [first, second, mixed, await records.get("missing")]
        finally:
            await records.aclose()

    try:
        first, second, mixed, missing = asyncio.run(scenario())
    finally:
        redis.Redis.from_url(DEFAULT_REDIS_URL).delete(prefix + "a")
    assert (first, second, missing) == (40, 42, None)
    assert mixed == [b"text", 1, b"42"]  # Lua numbers come back as integers


def test_openapi_still_documents_the_fast_routes(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    job = {"$ref": "#/components/schemas/Job"}
    for method, path, status in (("get", "/jobs/{job_id}", "200"), ("post", "/jobs", "202"), ("post", "/jobs/{job_id}/cancel", "200")):
        operation = paths[path][method]
        assert operation["security"] == [{"HTTPBearer": []}], (method, path)
        assert operation["responses"][status]["content"]["application/json"]["schema"] == job, (method, path)
    assert paths["/jobs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobPage"
    }
