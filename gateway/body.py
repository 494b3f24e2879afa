"""Reading request bodies under a size limit, before anything is stored."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import BadRequest, PayloadTooLarge

# A spooled body stays in memory up to this size, then moves to a temporary file;
# it is written in batches of about SPOOL_WRITE_BYTES, off the event loop.
SPOOL_MEMORY_BYTES = 1 << 20
SPOOL_WRITE_BYTES = 1 << 20
SpooledFile = tempfile.SpooledTemporaryFile[bytes]


def _mb(limit: int) -> str:
    return f"{limit / (1 << 20):g} MB"


def check_declared(request: Request, limit: int, what: str) -> None:
    """413 at once for a declared Content-Length over `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"{what} of {int(declared)} bytes is over the {_mb(limit)} limit")


async def _chunks_within(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body's chunks, or 413 as soon as it is known to exceed `limit` bytes."""
    check_declared(request, limit, what)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is over the {_mb(limit)} limit")
        yield chunk


async def read_limited(request: Request, limit: int, what: str = "payload") -> bytes:
    """The whole body, or 413 as soon as it is known to exceed `limit` bytes."""
    body = b"".join([chunk async for chunk in _chunks_within(request, limit, what)])
    request._body = body  # later parsers (multipart) read the cached body
    return body


async def spool_limited(request: Request, limit: int, what: str = "payload") -> SpooledFile:
    """The whole body in a temporary file (in memory up to `SPOOL_MEMORY_BYTES`, then on
    disk), or 413 as soon as it is known to exceed `limit` bytes."""
    spool: SpooledFile = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
    try:
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in _chunks_within(request, limit, what):
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= SPOOL_WRITE_BYTES:
                await asyncio.to_thread(spool.writelines, pending)
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(spool.writelines, pending)
    except BaseException:
        spool.close()
        raise
    return spool


def limited_request(request: Request, limit: int, what: str = "payload") -> Request:
    """The same request, whose body reads raise 413 once past `limit` bytes (for parsers
    that read the stream themselves, such as multipart)."""
    check_declared(request, limit, what)
    size = 0

    async def receive() -> Message:
        nonlocal size
        message = await request.receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(f"{what} is over the {_mb(limit)} limit")
        return message

    return Request(request.scope, receive)


# Requests answered before their body was read to the end (401, 404, 413 ...).
#
# A server that closes a connection with unread request bytes in its socket makes the
# kernel send a reset, and the reset destroys the answer already sent: a client that
# writes the whole body before it reads (urllib, requests) sees "connection reset"
# instead of the 413. So, like a lingering close, the rest of the body is read and
# thrown away (never kept) before the answer goes out, within `max_bytes` and
# `timeout_s`; read to the end, the connection even stays open for the next request.
# Past either bound, or for a declared length over `max_bytes` (reading it would only
# delay the same reset), the answer says `Connection: close`.
#
# A client that sent `Expect: 100-continue` and was never told to continue has not
# sent the body: it gets the answer at once, with `Connection: close`, and no
# `100 Continue` that would make it send the body for nothing.
#
# Whatever is still unread when the answer is finished is discarded in the background,
# within what is left of the same bounds: Hypercorn queues at most a few body chunks
# for the app, and with that queue full its reader and the app's last `send` wait on
# each other. (uvicorn ends the body at the answer's end: nothing more is read.)
_draining: set[asyncio.Task[None]] = set()


def _body_headers(scope: Scope) -> tuple[int | None, bool, bool]:
    """Declared length (None when not declared), chunked, and Expect: 100-continue."""
    length, chunked, expects = None, False, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            value = bytes(value).strip()
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expects = bytes(value).strip().lower() == b"100-continue"
    return length, chunked, expects


class UnreadBodyGuard:
    """Wraps one HTTP request's receive/send; see above."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, max_bytes: int, timeout_s: float
    ) -> None:
        self._receive = receive
        self._send = send
        self._budget = max_bytes  # bytes left to discard
        self._timeout_s = timeout_s
        self._deadline: float | None = None
        self._declared, chunked, self._awaits_continue = _body_headers(scope)
        self._done = not chunked and self._declared in (None, 0)
        self._asked = False

    async def receive(self) -> Message:
        self._asked = True
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done = True
        return message

    async def send(self, message: Message) -> None:
        if not self._done:
            if message["type"] == "http.response.start":
                message = await self._before_answer(message)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                drain = asyncio.ensure_future(self._discard())
                _draining.add(drain)
                drain.add_done_callback(_draining.discard)
        await self._send(message)

    async def _before_answer(self, message: Message) -> Message:
        waiting = self._awaits_continue and not self._asked
        too_long = self._declared is not None and self._declared > self._budget
        if not waiting and not too_long:
            await self._discard()
        if self._done:
            return message
        headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
        return {**message, "headers": [*headers, (b"connection", b"close")]}

    async def _discard(self) -> None:
        """Read and drop the rest of the body, within the bytes and time left."""
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self._timeout_s
        with contextlib.suppress(Exception):
            async with asyncio.timeout_at(self._deadline):
                while not self._done and self._budget >= 0:
                    message = await self.receive()
                    self._budget -= len(message.get("body", b""))


class UnreadBodyMiddleware:
    """Applies `UnreadBodyGuard` to every HTTP request."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        if max_bytes < 0 or timeout_s <= 0:
            raise ValueError("max_bytes must be >= 0 and timeout_s > 0")
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = UnreadBodyGuard(scope, receive, send, self.max_bytes, self.timeout_s)
        await self.app(scope, guard.receive, guard.send)
