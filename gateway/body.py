"""Reading request bodies under a size limit, before anything is stored."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import BadRequest, PayloadTooLarge


def _mb(limit: int) -> str:
    return f"{limit / (1 << 20):g} MB"


async def read_limited(request: Request, limit: int, what: str = "payload") -> bytes:
    """The whole body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"{what} of {int(declared)} bytes is over the {_mb(limit)} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is over the {_mb(limit)} limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # later parsers (multipart) read the cached body
    return body


# Requests answered before their body was read to the end (401, 404, 413, 415 ...).
# Hypercorn queues at most a few body chunks for the app; when the app has answered
# without reading the rest, the queue stays full, the server's reader and the app's
# last `send` wait on each other, and the connection hangs for good (the client waits
# on its next request, the socket is never closed). `UnreadBodyGuard` answers such a
# request with `Connection: close` and discards the unread chunks while the response
# is finished, so the server can close the connection.
_DRAIN_TIMEOUT_S = 30.0
_draining: set[asyncio.Task[None]] = set()


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


class UnreadBodyGuard:
    """Wraps one HTTP request's receive/send; see above."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._done = not _has_body(scope)
        self._drain: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done = True
        return message

    async def send(self, message: Message) -> None:
        if not self._done:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and self._drain is None
            ):
                self._drain = asyncio.ensure_future(self._discard_rest())
                _draining.add(self._drain)
                self._drain.add_done_callback(_draining.discard)
        await self._send(message)

    async def _discard_rest(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                while not self._done:
                    await self.receive()


class UnreadBodyMiddleware:
    """Applies `UnreadBodyGuard` to every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = UnreadBodyGuard(scope, receive, send)
        await self.app(scope, guard.receive, guard.send)
