"""Bounded request bodies: a pure ASGI middleware answering 413 before the app reads too much."""

from __future__ import annotations

import json
from typing import Any

from service.errors import error_body


class BodyRefused(Exception):
    """A body ``read_bounded`` will not read: its Content-Length is not a number (400) or too large (413)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def read_bounded(receive: Any, content_length: bytes | None, max_bytes: int) -> bytes | None:
    """The whole request body, refused (``BodyRefused``) above ``max_bytes``: by Content-Length
    first, then by the bytes actually sent. None when the client goes away before it is sent."""
    if content_length is not None:
        try:
            too_large = int(content_length) > max_bytes
        except ValueError:
            raise BodyRefused(400, "bad_request", "Content-Length is not a number") from None
        if too_large:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        size += len(body)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(max_bytes: int) -> BodyRefused:
    return BodyRefused(
        413,
        "payload_too_large",
        f"the request body is larger than {max_bytes} bytes (NACS_MAX_BODY_BYTES)",
    )


async def send_refusal(send: Any, refused: BodyRefused) -> None:
    """The error response of a refused body; the connection closes, since the rest of the body is left unread."""
    body = json.dumps(error_body(refused.code, refused.message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refused.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies above ``max_bytes`` (``read_bounded``), then hand the app the body read."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            whole = await read_bounded(receive, length, self.max_bytes)
        except BodyRefused as refused:
            await send_refusal(send, refused)
            return
        if whole is None:
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
