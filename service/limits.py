"""Bounded request bodies: a pure ASGI middleware answering 413 before the app reads too much."""

from __future__ import annotations

import json
from typing import Any

from service.errors import error_body


class BodyLimit:
    """Refuse bodies above ``max_bytes``, by Content-Length first, then by the bytes actually
    sent; hand the app the body read. A refusal closes the connection, since the rest of the
    body is left unread."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        limit = f"the request body is larger than {self.max_bytes} bytes (NACS_MAX_BODY_BYTES)"
        too_large = (413, "payload_too_large", limit)
        if length is not None and not length.isdigit():
            await _refuse(send, 400, "bad_request", "Content-Length is not a number")
            return
        chunks: list[bytes] = []
        size = int(length or 0)
        while size <= self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size = max(size, sum(map(len, chunks)))
            if not message.get("more_body", False):
                break
        if size > self.max_bytes:
            await _refuse(send, *too_large)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
