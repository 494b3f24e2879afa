"""The webhook client (runtime/webhooks.py) through Destinations, against local HTTP
servers that misbehave on purpose: pooled keep-alive connections and their bound,
a slow drip, large answers, cookies, redirects and connections cut mid-answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from runtime.destinations import Destinations, build_record
from runtime.models import WebhookDestination
from runtime.settings import Settings, load_settings
from runtime.webhooks import WEBHOOK_DRAIN_BYTES
from tests.harness import WEBHOOK_ALLOWED_NETWORKS, NoBroker

TIMEOUT_S = 0.5
ATTEMPTS = 3
BACKOFF_S = 0.05

pytestmark = pytest.mark.timeout(60)

Handler = Callable[["Conn"], Awaitable[None]]


class Conn:
    """One accepted connection of a Server, with helpers to read requests."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer

    async def request(self) -> dict[str, str] | None:
        """Read one request; its headers (lower-case names), or None at end of stream."""
        line = await self.reader.readline()
        if not line:
            return None
        headers: dict[str, str] = {}
        while (raw := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.server.requests.append(headers)
        return headers

    async def answer(self, status: str = "200 OK", body: bytes = b"", extra: str = "") -> None:
        self.writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body
        )
        await self.writer.drain()


class Server:
    """An HTTP/1.1 server on 127.0.0.1 whose every connection runs `handler`; it counts
    connections, and the most open at once."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(Conn(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def keep_answering(conn: Conn) -> None:
    while await conn.request() is not None:
        await conn.answer(body=b"thanks")


def make_settings(**overrides: Any) -> Settings:
    return load_settings(
        webhook_timeout_s=TIMEOUT_S, webhook_retry_attempts=ATTEMPTS, webhook_backoff_s=BACKOFF_S,
        webhook_allowed_networks=WEBHOOK_ALLOWED_NETWORKS, **overrides,
    )


@pytest.fixture
async def destinations() -> AsyncIterator[Destinations]:
    d = Destinations(make_settings(), cast(Any, NoBroker()), None)
    await d.start()
    yield d
    await d.close()


async def serving(handler: Handler) -> Server:
    server = Server(handler)
    await server.start()
    return server


def a_record(n: int = 1) -> dict[str, Any]:
    return build_record(
        request_id=f"req-{n}", task_id=f"task-{n}", function="f", version="v1", condition="Success",
        invoke_count=1, payload=b"{}", content_type="application/json", status_code=200,
        function_error=None, result=b"null", result_content_type="application/json",
    )


def hook(server: Server) -> WebhookDestination:
    return WebhookDestination(type="webhook", url=server.url)


async def test_connections_are_kept_alive_and_reused(destinations: Destinations) -> None:
    server = await serving(keep_answering)
    try:
        for n in range(20):
            delivery = await destinations.deliver("t1", hook(server), a_record(n))
            assert delivery.status == "delivered", delivery
    finally:
        await server.stop()
    assert len(server.requests) == 20
    assert server.connections == 1
    assert server.requests[0]["user-agent"] == "fnhost"


async def test_the_pool_is_bounded_by_max_connections() -> None:
    async def slow(conn: Conn) -> None:
        while await conn.request() is not None:
            await asyncio.sleep(0.1)
            await conn.answer()

    server = await serving(slow)
    d = Destinations(make_settings(webhook_max_connections=2), cast(Any, NoBroker()), None)
    await d.start()
    try:
        deliveries = await asyncio.gather(*(d.deliver("t1", hook(server), a_record(n)) for n in range(8)))
    finally:
        await d.close()
        await server.stop()
    assert [x.status for x in deliveries] == ["delivered"] * 8
    assert len(server.requests) == 8
    assert server.most_open == 2
    assert server.connections == 2


async def test_a_slow_drip_answer_times_out_in_bounded_time(destinations: Destinations) -> None:
    async def drip(conn: Conn) -> None:
        while await conn.request() is not None:
            conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):  # each byte well within any per-read timeout
                conn.writer.write(b"x")
                await conn.writer.drain()
                await asyncio.sleep(0.05)

    server = await serving(drip)
    started = time.monotonic()
    try:
        delivery = await destinations.deliver("t1", hook(server), a_record())
    finally:
        await server.stop()
    took = time.monotonic() - started
    assert delivery.status == "failed"
    assert delivery.attempts == ATTEMPTS
    assert delivery.error == f"no answer within {TIMEOUT_S:g} s"
    assert ATTEMPTS * TIMEOUT_S <= took < ATTEMPTS * TIMEOUT_S + 3 * BACKOFF_S + 1.0


async def test_a_large_answer_is_not_read_to_its_end(destinations: Destinations) -> None:
    big = b"x" * (WEBHOOK_DRAIN_BYTES * 16)

    async def large(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.answer(body=big)

    server = await serving(large)
    try:
        first = await destinations.deliver("t1", hook(server), a_record(1))
        second = await destinations.deliver("t1", hook(server), a_record(2))
    finally:
        await server.stop()
    assert (first.status, second.status) == ("delivered", "delivered")
    # The connection of an answer dropped half-read cannot be reused.
    assert server.connections == 2


async def test_cookies_are_not_kept(destinations: Destinations) -> None:
    async def sets_cookie(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.answer(extra="Set-Cookie: session=tenant-a; Path=/\r\n")

    server = await serving(sets_cookie)
    try:
        for n in range(2):
            assert (await destinations.deliver("t1", hook(server), a_record(n))).status == "delivered"
    finally:
        await server.stop()
    assert [r.get("cookie") for r in server.requests] == [None, None]


async def test_a_redirect_is_not_followed(destinations: Destinations) -> None:
    async def moved(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.answer("302 Found", extra="Location: http://127.0.0.1:1/elsewhere\r\n")

    server = await serving(moved)
    try:
        delivery = await destinations.deliver("t1", hook(server), a_record())
    finally:
        await server.stop()
    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert delivery.error == "HTTP 302 Found"
    assert len(server.requests) == 1


async def test_a_connection_cut_before_the_answer_is_retried(destinations: Destinations) -> None:
    async def cut_first(conn: Conn) -> None:
        if conn.server.connections == 1:
            await conn.request()
            return  # closed without an answer
        await keep_answering(conn)

    server = await serving(cut_first)
    try:
        delivery = await destinations.deliver("t1", hook(server), a_record())
    finally:
        await server.stop()
    assert delivery.status == "delivered", delivery
    assert delivery.attempts == 2
    assert len(server.requests) == 2
