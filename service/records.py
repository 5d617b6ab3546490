"""Job records from the event loop: one pipelined Redis connection, no thread hop.

``GET /jobs/{id}`` is one Redis ``GET``, and ``POST /jobs`` one script call
(``worker.queueing.JobStore.creation_script``). ``redis.asyncio`` spends several times the round
trip itself in Python per command (a pooled connection checked out and back, a
timeout task around each read and write), and the synchronous client costs a
hop through the thread pool, so the API talks to Redis through ``AsyncRecords``:
one connection per event loop on which every request writes its commands at
once and waits for its reply, replies arriving in the order the commands
went out (Redis answers a connection's commands in order). The commands of
one turn of the event loop leave in one write.

Failures read as redis-py's: a refused or lost connection raises
``redis.exceptions.ConnectionError``, a late reply ``redis.exceptions.TimeoutError``
(and the connection is dropped, since later replies would no longer line up),
so the API's 503 handler applies unchanged. The next read connects again.

URLs ``redis://[[user]:password@]host[:port][/db]`` and ``unix://path[?db=N]``
are read this way; any other (``rediss://`` TLS, extra connection options) goes
through ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.exceptions

from worker.queueing import Script, connect_async


class _Reply:
    """A RESP error reply (``-ERR ...``)."""

    def __init__(self, message: str) -> None:
        self.message = message


_INCOMPLETE = object()


def _parse(buffer: bytearray, start: int) -> tuple[Any, int]:
    """One RESP2 reply from ``start`` (errors come back as ``_Reply``).

    Returns (value, end) or (_INCOMPLETE, start) when the buffer holds less than a reply.
    """
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return _INCOMPLETE, start
    kind, head = buffer[start : start + 1], bytes(buffer[start + 1 : line_end])
    if kind == b"$":
        length = int(head)
        if length < 0:
            return None, line_end + 2
        end = line_end + 2 + length
        if len(buffer) < end + 2:
            return _INCOMPLETE, start
        return bytes(buffer[line_end + 2 : end]), end + 2
    if kind == b"+":
        return head.decode(), line_end + 2
    if kind == b"-":
        return _Reply(head.decode(errors="replace")), line_end + 2
    if kind == b":":
        return int(head), line_end + 2
    if kind == b"*":
        count = int(head)
        if count < 0:
            return None, line_end + 2
        items, position = [], line_end + 2
        for _ in range(count):
            item, position = _parse(buffer, position)
            if item is _INCOMPLETE:
                return _INCOMPLETE, start
            items.append(item)
        return items, position
    raise redis.exceptions.ConnectionError(f"unexpected reply from Redis: {bytes(buffer[start:line_end])[:40]!r}")


def _encode(part: Any) -> bytes:
    """An argument as redis-py sends it: bytes as they are, text in UTF-8, numbers as text."""
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, bool):
        raise redis.exceptions.DataError("a bool is not a Redis argument; convert it to bytes, text or a number")
    if isinstance(part, int):
        return str(part).encode()
    if isinstance(part, float):
        return repr(part).encode()
    if isinstance(part, memoryview):
        return part.tobytes()
    raise redis.exceptions.DataError(f"a {type(part).__name__} is not a Redis argument")


def _command(*parts: Any) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        encoded = _encode(part)
        out.append(b"$%d\r\n%s\r\n" % (len(encoded), encoded))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One connection: commands written in order, each waiter resolved by its reply in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Any]] = deque()  # one per command sent, oldest first
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        start = 0
        try:
            while self.waiters:
                value, end = _parse(self.buffer, start)
                if value is _INCOMPLETE:
                    break
                start = end
                waiter = self.waiters.popleft()
                if waiter.done():  # its request gave up (timeout, client gone)
                    continue
                if isinstance(value, _Reply):
                    waiter.set_exception(redis.exceptions.ResponseError(value.message))
                else:
                    waiter.set_result(value)
        except (ValueError, redis.exceptions.ConnectionError) as error:
            self.fail(redis.exceptions.ConnectionError(f"Redis protocol error: {error}"))
            return
        del self.buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError(f"connection to Redis lost ({exc or 'closed by the server'})"))

    def fail(self, error: Exception) -> None:
        """Drop the connection and fail every request still waiting on it."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        """Queue ``payload`` (one command); the commands of one turn of the event loop go out in
        one write. The future gets the reply; an error reply raises ResponseError."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiters.append(waiter)
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(payload)
        return waiter

    def _flush(self) -> None:
        if self.outgoing and not self.lost:
            self.transport.write(b"".join(self.outgoing))  # type: ignore[union-attr]
        self.outgoing.clear()


class _Pipelined:
    """Reads and script calls over one pipelined connection of one event loop."""

    def __init__(self, target: dict[str, Any], connect_timeout_s: float, timeout_s: float) -> None:
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        target = self.target
        where = target.get("path") or f"{target['host']}:{target['port']}"
        try:
            if target.get("path"):
                opening = loop.create_unix_connection(_Connection, target["path"])
            else:
                opening = loop.create_connection(_Connection, target["host"], target["port"])
            _, connection = await asyncio.wait_for(opening, self.connect_timeout_s)
        except asyncio.TimeoutError:
            raise redis.exceptions.TimeoutError(f"Timeout connecting to Redis at {where}") from None
        except OSError as error:
            raise redis.exceptions.ConnectionError(f"Error connecting to Redis at {where}: {error}") from None
        setup = []
        if target.get("password") is not None:
            credentials = [target["password"]] if target.get("username") is None else [target["username"], target["password"]]
            setup.append(_command(b"AUTH", *(c.encode() for c in credentials)))
        if target.get("db"):
            setup.append(_command(b"SELECT", str(target["db"]).encode()))
        for command in setup:
            await self._await(connection, connection.send(command))
        self._connection = connection
        return connection

    async def _await(self, connection: _Connection, waiter: asyncio.Future[Any]) -> Any:
        handle = asyncio.get_running_loop().call_later(self.timeout_s, _expire, connection, waiter, self.timeout_s)
        try:
            return await waiter
        finally:
            handle.cancel()

    async def get(self, key: str) -> bytes | None:
        connection = await self._connected()
        encoded = key.encode()
        return await self._await(connection, connection.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(encoded), encoded)))

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        connection = await self._connected()
        try:
            return await self._await(connection, connection.send(_command(b"EVALSHA", script.sha, len(keys), *keys, *args)))
        except redis.exceptions.ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return await self._await(connection, connection.send(_command(b"EVAL", script.source, len(keys), *keys, *args)))

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.fail(redis.exceptions.ConnectionError("the connection was closed by the service"))
            self._connection = None


def _expire(connection: _Connection, waiter: asyncio.Future[Any], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(redis.exceptions.TimeoutError(f"Redis did not answer within {timeout_s:g} s"))
        connection.fail(redis.exceptions.ConnectionError("connection to Redis dropped after a timeout"))


def pipelined_target(url: str) -> dict[str, Any] | None:
    """Where ``url`` points, when ``_Pipelined`` can serve it; None for URLs left to redis.asyncio."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        if set(query) - {"db"} or parts.username or parts.password:
            return None
        return {"path": unquote(parts.path), "db": int(query.get("db", ["0"])[0])}
    if parts.scheme != "redis" or query or parts.fragment:
        return None
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        return None
    return {
        "host": parts.hostname or "localhost",
        "port": parts.port or 6379,
        "db": int(db_text),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }


class AsyncRecords:
    """Reads job records (``{prefix}job:{id}``) and runs scripts, on the running event loop.

    Each event loop gets its own connection, made on its first read.
    """

    def __init__(self, url: str, prefix: str, *, timeout_s: float = 5.0, read_timeout_s: float | None = None) -> None:
        """``timeout_s`` bounds connecting; a reply may take ``read_timeout_s`` (default: as
        ``worker.queueing.connect``, at least 10 s) before the read fails."""
        self.url = url
        self.prefix = prefix
        self.connect_timeout_s = timeout_s
        self.timeout_s = read_timeout_s if read_timeout_s is not None else max(timeout_s, 10.0)
        self._target = pipelined_target(url)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _for_loop(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None:
            if self._target is not None:
                self._client = _Pipelined(self._target, self.connect_timeout_s, self.timeout_s)
            else:
                self._client = connect_async(self.url, timeout_s=self.connect_timeout_s)
            self._loop = loop
        return self._client

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The record of ``job_id``, or None. Raises redis.exceptions.ConnectionError / TimeoutError."""
        raw = await self._for_loop().get(self.prefix + "job:" + job_id)
        return json.loads(raw) if raw else None

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua ``script`` (EVALSHA, then EVAL if Redis lacks it); its reply. An error raises ResponseError."""
        client = self._for_loop()
        if isinstance(client, _Pipelined):
            return await client.script(script, keys, args)
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await client.eval(script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()
