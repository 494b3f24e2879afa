"""Destinations against real services: a local HTTP server for webhooks, RabbitMQ
(vhost from FNHOST_TEST_AMQP_URL) for queues, and a recording submit for functions.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelPreconditionFailed

from runtime import constants as c
from runtime.broker import topology
from runtime.destinations import Destinations, build_record
from runtime.errors import NotFound, Unavailable
from runtime.models import FunctionDestination, QueueDestination, WebhookDestination
from runtime.settings import Settings, load_settings
from tests.harness import WEBHOOK_ALLOWED_NETWORKS

AMQP_URL = os.environ.get("FNHOST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/fnhost-test")
TIMEOUT_S = 0.5
ATTEMPTS = 3
BACKOFF_S = 0.05

ON_DONE = FunctionDestination(type="function", name="on-done")

pytestmark = pytest.mark.timeout(60)


def webhook(url: str) -> WebhookDestination:
    return WebhookDestination(type="webhook", url=url)


# -- a webhook receiver --------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Hook:
    """An HTTP/1.1 server on 127.0.0.1 that records each request and answers with the
    next status of `script`, then `default` (keep-alive, as a pooled client expects)."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/done?key=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(Seen(method, path, headers, body))
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                status = self.script.pop(0) if self.script else self.default
                answer = b"thanks"
                writer.write(
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                    f"Content-Type: text/plain\r\nContent-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def amqp() -> AsyncIterator[AbstractRobustConnection]:
    connection = await topology.connect(AMQP_URL)
    yield connection
    await connection.close()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    server = Hook()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        amqp_url=AMQP_URL,
        webhook_timeout_s=TIMEOUT_S,
        webhook_retry_attempts=ATTEMPTS,
        webhook_backoff_s=BACKOFF_S,
        webhook_allowed_networks=WEBHOOK_ALLOWED_NETWORKS,
        destination_publish_timeout_s=5.0,
    )


@dataclass
class Submits:
    """A stand-in for the async invoke path: records calls; raises what `errors` holds first."""

    calls: list[tuple[str, str, bytes, str]] = field(default_factory=list)
    chain_depths: list[int] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    async def __call__(
        self, tenant: str, function: str, body: bytes, content_type: str, chain_depth: int
    ) -> str:
        self.calls.append((tenant, function, body, content_type))
        self.chain_depths.append(chain_depth)
        if self.errors:
            raise self.errors.pop(0)
        return f"task-{len(self.calls)}"


@pytest.fixture
def submits() -> Submits:
    return Submits()


@pytest.fixture
async def destinations(
    settings: Settings, amqp: AbstractRobustConnection, submits: Submits
) -> AsyncIterator[Destinations]:
    d = Destinations(settings, amqp, submits)
    await d.start()
    yield d
    await d.close()


@pytest.fixture
def tenant() -> str:
    return "t" + secrets.token_hex(6)


@pytest.fixture
async def queues(amqp: AbstractRobustConnection) -> AsyncIterator[list[str]]:
    """Names of queues a test makes; all deleted afterwards, full or not."""
    names: list[str] = []
    yield names
    channel = await amqp.channel()
    for name in names:
        await channel.queue_delete(name, if_unused=False, if_empty=False)
    await channel.close()


@pytest.fixture
async def plain() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A non-robust connection for checks that close their channel on purpose."""
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


def a_record(condition: str = "Success", task_id: str = "task-42") -> dict[str, Any]:
    return build_record(
        request_id="req-7",
        task_id=task_id,
        function="thumbnail",
        version="3f2a9c",
        condition=condition,
        invoke_count=2,
        payload=b'{"image": "a.png"}',
        content_type="application/json",
        status_code=200,
        function_error=None if condition == "Success" else "Unhandled",
        result=b"\x00\x01binary",
        result_content_type="application/octet-stream",
    )


async def timed(call: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


# -- webhook -----------------------------------------------------------------


async def test_webhook_delivered_with_the_record_and_headers(hook: Hook, destinations: Destinations) -> None:
    record = a_record("RetriesExhausted")
    delivery = await destinations.deliver("t1", webhook(hook.url), record)

    assert delivery.status == "delivered", delivery
    assert delivery.to_dict() | {"duration_ms": 0} == {
        "type": "webhook", "target": hook.url, "status": "delivered", "attempts": 1, "error": None,
        "duration_ms": 0,
    }
    assert delivery.duration_ms > 0
    [seen] = hook.seen
    assert (seen.method, seen.path) == ("POST", "/hooks/done?key=1")
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-fnhost-task-id"] == "task-42"
    assert seen.headers["x-fnhost-condition"] == "RetriesExhausted"
    assert seen.body == orjson.dumps(record)
    assert orjson.loads(seen.body) == record


@pytest.mark.parametrize("transient", [500, 503, 429, 408])
async def test_webhook_retried_then_delivered(hook: Hook, destinations: Destinations, transient: int) -> None:
    hook.script = [transient, transient]
    delivery = await destinations.deliver("t1", webhook(hook.url), a_record())

    assert delivery.status == "delivered", delivery
    assert delivery.attempts == 3
    assert delivery.error is None
    assert len(hook.seen) == 3
    assert len({s.body for s in hook.seen}) == 1


async def test_webhook_failing_always_fails_in_bounded_time(hook: Hook, destinations: Destinations) -> None:
    hook.default = 500
    delivery, took = await timed(
        destinations.deliver("t1", webhook(hook.url), a_record())
    )

    assert delivery.status == "failed"
    assert delivery.attempts == ATTEMPTS
    assert delivery.error == "HTTP 500 Internal Server Error"
    assert len(hook.seen) == ATTEMPTS
    # Backoff waited between attempts: 0.05 + 0.1.
    assert BACKOFF_S * 3 <= took < destinations.max_delivery_s


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_webhook_client_error_fails_at_once(
    hook: Hook, destinations: Destinations, status: int
) -> None:
    hook.default = status
    delivery = await destinations.deliver("t1", webhook(hook.url), a_record())

    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert delivery.error is not None and delivery.error.startswith(f"HTTP {status} ")
    assert len(hook.seen) == 1


async def test_webhook_connection_refused(destinations: Destinations) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    delivery = await destinations.deliver("t1", webhook(url), a_record())

    assert delivery.status == "failed"
    assert delivery.attempts == ATTEMPTS
    assert delivery.error is not None and "ConnectError" in delivery.error


async def test_slow_webhook_times_out_in_bounded_time(hook: Hook, destinations: Destinations) -> None:
    hook.delay_s = TIMEOUT_S * 4
    delivery, took = await timed(
        destinations.deliver("t1", webhook(hook.url), a_record())
    )

    assert delivery.status == "failed"
    assert delivery.attempts == ATTEMPTS
    assert delivery.error == f"no answer within {TIMEOUT_S:g} s"
    assert ATTEMPTS * TIMEOUT_S <= took < ATTEMPTS * TIMEOUT_S + 3 * BACKOFF_S + 1.0


# -- queue -------------------------------------------------------------------


async def test_queue_delivered_to_the_tenant_queue(
    destinations: Destinations, settings: Settings, tenant: str, queues: list[str],
    plain: aio_pika.abc.AbstractConnection,
) -> None:
    name = c.destination_queue(tenant, "failed-thumbnails")
    assert name == f"fnhost.d.{tenant}.failed-thumbnails"
    queues.append(name)
    record = a_record("EventAgeExceeded")
    destination = QueueDestination(type="queue", name="failed-thumbnails")
    delivery = await destinations.deliver(tenant, destination, record)

    assert delivery.status == "delivered", delivery
    assert (delivery.type, delivery.target, delivery.attempts) == ("queue", name, 1)
    channel = await plain.channel()
    queue = await channel.declare_queue(name, passive=True)
    message = await queue.get(timeout=5)
    assert message is not None
    await message.ack()
    assert message.body == orjson.dumps(record)
    assert orjson.loads(message.body) == record
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == "task-42"
    assert message.headers[c.H_TASK_ID] == "task-42"
    assert message.headers[c.H_CONDITION] == "EventAgeExceeded"
    assert await queue.get(fail=False) is None

    # Durable and quorum, with its length limit: the same declaration is accepted, any
    # other is refused (the limit's absence too).
    limit = settings.destination_queue_max_messages
    bounded: dict[str, Any] = {
        "x-queue-type": "quorum", "x-max-length": limit, "x-overflow": "reject-publish",
    }
    await channel.declare_queue(name, durable=True, arguments=bounded)
    for other in ({"durable": False}, {"durable": True, "arguments": {"x-queue-type": "classic"}},
                  {"durable": True, "arguments": {"x-queue-type": "quorum"}}):
        with pytest.raises(ChannelPreconditionFailed):
            await (await plain.channel()).declare_queue(name, **other)


async def test_queue_names_are_per_tenant(
    destinations: Destinations, queues: list[str], plain: aio_pika.abc.AbstractConnection
) -> None:
    a, b = "t" + secrets.token_hex(6), "t" + secrets.token_hex(6)
    queues.extend([c.destination_queue(a, "out"), c.destination_queue(b, "out")])
    destination = QueueDestination(type="queue", name="out")
    assert (await destinations.deliver(a, destination, a_record(task_id="for-a"))).status == "delivered"
    assert (await destinations.deliver(b, destination, a_record(task_id="for-b"))).status == "delivered"

    channel = await plain.channel()
    for tenant_id, task_id in ((a, "for-a"), (b, "for-b")):
        queue = await channel.declare_queue(c.destination_queue(tenant_id, "out"), passive=True)
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        assert orjson.loads(message.body)["requestContext"]["taskId"] == task_id
        assert await queue.get(fail=False) is None


async def test_queue_deleted_since_declared_is_declared_again(
    destinations: Destinations, tenant: str, queues: list[str], amqp: AbstractRobustConnection
) -> None:
    name = c.destination_queue(tenant, "comes-back")
    queues.append(name)
    destination = QueueDestination(type="queue", name="comes-back")
    assert (await destinations.deliver(tenant, destination, a_record())).attempts == 1

    channel = await amqp.channel()
    await channel.queue_delete(name, if_unused=False, if_empty=False)
    # The broker returns the unroutable record; the retry declares the queue again.
    delivery = await destinations.deliver(tenant, destination, a_record())
    assert delivery.status == "delivered", delivery
    assert delivery.attempts == 2
    queue = await channel.declare_queue(name, passive=True)
    assert queue.declaration_result.message_count == 1
    await channel.close()


async def test_queue_with_other_arguments_fails_and_the_channel_recovers(
    destinations: Destinations, tenant: str, queues: list[str], plain: aio_pika.abc.AbstractConnection
) -> None:
    taken = c.destination_queue(tenant, "taken")
    queues.extend([taken, c.destination_queue(tenant, "fine")])
    channel = await plain.channel()
    await channel.declare_queue(taken, durable=True, arguments={"x-queue-type": "classic"})

    delivery = await destinations.deliver(tenant, QueueDestination(type="queue", name="taken"), a_record())
    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert delivery.error is not None and "exists with other arguments" in delivery.error

    delivery = await destinations.deliver(tenant, QueueDestination(type="queue", name="fine"), a_record())
    assert delivery.status == "delivered", delivery


# -- function ----------------------------------------------------------------


async def test_function_destination_submits_the_record(destinations: Destinations, submits: Submits) -> None:
    record = a_record()
    delivery = await destinations.deliver("t9", ON_DONE, record)

    assert delivery.status == "delivered", delivery
    assert (delivery.type, delivery.target, delivery.attempts) == ("function", "on-done", 1)
    assert submits.calls == [("t9", "on-done", orjson.dumps(record), "application/json")]
    assert submits.chain_depths == [1]  # the record of a task a client submitted


async def test_function_not_found_fails_without_retry(destinations: Destinations, submits: Submits) -> None:
    submits.errors = [NotFound("function on-done not found")]
    delivery = await destinations.deliver("t9", ON_DONE, a_record())

    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert delivery.error == "function on-done not found"
    assert len(submits.calls) == 1


async def test_function_unavailable_is_retried(destinations: Destinations, submits: Submits) -> None:
    submits.errors = [Unavailable("broker down")]
    delivery = await destinations.deliver("t9", ON_DONE, a_record())

    assert delivery.status == "delivered", delivery
    assert delivery.attempts == 2
    assert len(submits.calls) == 2


async def test_function_destination_without_submit_fails(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    d = Destinations(settings, amqp, None)
    await d.start()
    try:
        delivery = await d.deliver("t9", ON_DONE, a_record())
    finally:
        await d.close()
    assert delivery.status == "failed"
    assert delivery.attempts == 1


async def test_function_submit_that_hangs_is_not_repeated(
    amqp: AbstractRobustConnection,
) -> None:
    calls: list[str] = []

    async def hang(tenant: str, function: str, body: bytes, content_type: str, depth: int) -> str:
        calls.append(function)
        await asyncio.sleep(10)
        return "never"

    settings = load_settings(amqp_url=AMQP_URL, destination_publish_timeout_s=0.2)
    submit: Callable[[str, str, bytes, str, int], Awaitable[str]] = hang
    d = Destinations(settings, amqp, submit)
    await d.start()
    try:
        delivery = await d.deliver("t9", FunctionDestination(type="function", name="slow"), a_record())
    finally:
        await d.close()
    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert calls == ["slow"]
    assert delivery.error is not None and "may have been submitted" in delivery.error

