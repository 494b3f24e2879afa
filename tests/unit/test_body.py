"""UnreadBodyMiddleware: a body left unread by an early answer is read and dropped, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.body import UnreadBodyMiddleware

CHUNK = 64 * 1024


class Client:
    """The server side of one request: `chunks` body chunks, each after `delay_s`."""

    def __init__(self, chunks: int, delay_s: float = 0.0) -> None:
        self.left = chunks
        self.delay_s = delay_s
        self.read = 0
        self.read_before_answer = -1
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.read += 1
        self.left -= 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": self.left > 0}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.read_before_answer = self.read
        self.sent.append(message)

    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"])


async def early_413(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that refuses the request without reading its body."""
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def scope(**headers: str) -> Scope:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": "POST", "path": "/", "headers": raw}


def run(client: Client, request: Scope, max_bytes: int = 1 << 30, timeout_s: float = 5.0) -> None:
    app = UnreadBodyMiddleware(early_413, max_bytes=max_bytes, timeout_s=timeout_s)

    async def main() -> None:
        await app(request, client.receive, client.send)
        await asyncio.sleep(0)  # let a background discard run its course

    asyncio.run(main())


@pytest.mark.parametrize(
    "headers",
    [{"content_length": str(10 * CHUNK)}, {"transfer_encoding": "chunked"}],
    ids=["content-length", "chunked"],
)
def test_rest_of_the_body_is_read_before_the_answer(headers: dict[str, str]) -> None:
    client = Client(10)
    run(client, scope(**headers))
    assert client.read_before_answer == 10 and client.left == 0
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
    assert b"connection" not in client.headers()  # read to the end: the connection stays open


def test_no_body_nothing_read() -> None:
    client = Client(10)
    run(client, scope())
    assert client.read == 0
    assert b"connection" not in client.headers()


def test_discarding_stops_past_max_bytes() -> None:
    client = Client(1000)
    run(client, scope(transfer_encoding="chunked"), max_bytes=4 * CHUNK)
    assert client.read_before_answer == 5, client.read_before_answer
    assert client.read == 5  # nothing more after the answer: the budget is spent
    assert client.headers()[b"connection"] == b"close"


def test_declared_length_over_max_bytes_is_not_read() -> None:
    client = Client(1000)
    run(client, scope(content_length=str(1000 * CHUNK)), max_bytes=4 * CHUNK)
    assert client.read_before_answer == 0
    assert client.read <= 5  # after the answer, within the same budget
    assert client.headers()[b"connection"] == b"close"


def test_discarding_stops_at_the_timeout() -> None:
    client = Client(1000, delay_s=0.05)
    loop_time: dict[str, float] = {}

    async def timed() -> None:
        app = UnreadBodyMiddleware(early_413, max_bytes=1 << 30, timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        await app(scope(transfer_encoding="chunked"), client.receive, client.send)
        loop_time["answer"] = asyncio.get_running_loop().time() - started
        await asyncio.sleep(0.1)

    asyncio.run(timed())
    assert loop_time["answer"] < 1.0, loop_time
    assert client.read < 20, client.read
    assert client.headers()[b"connection"] == b"close"


def test_expect_100_continue_never_asked_is_answered_at_once() -> None:
    """The client waits for `100 Continue` before it sends the body: nothing to drop,
    and asking for the body would make the server tell it to send it."""
    client = Client(10)
    run(client, scope(content_length=str(10 * CHUNK), expect="100-continue"))
    assert client.read_before_answer == 0
    assert client.headers()[b"connection"] == b"close"


def test_body_partly_read_by_the_app_is_read_to_the_end() -> None:
    async def reads_two(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await receive()
        await early_413(scope, receive, send)

    client = Client(10)
    app = UnreadBodyMiddleware(reads_two, max_bytes=1 << 30, timeout_s=5)
    asyncio.run(app(scope(transfer_encoding="chunked", expect="100-continue"),
                    client.receive, client.send))
    assert client.read == 10
    assert b"connection" not in client.headers()


@pytest.mark.parametrize("kwargs", [{"max_bytes": -1, "timeout_s": 1.0},
                                    {"max_bytes": 1, "timeout_s": 0.0}])
def test_bounds_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        UnreadBodyMiddleware(early_413, **kwargs)
