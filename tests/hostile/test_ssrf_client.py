"""Server-side request forgery through webhook destinations, at the webhook client
(runtime/webhooks.py through Destinations): a URL that got past validation (stored
before the policy, or before the operator narrowed FNHOST_WEBHOOK_ALLOWED_NETWORKS)
or a name that resolves to a refused address reaches nothing there.

Only loopback traffic: receivers listen on 127.0.0.1 (allowed here, as in every test
platform), 127.0.0.2 and ::1 (refused). Names are answered by a table, numeric hosts
read with AI_NUMERICHOST: no DNS query leaves the machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from runtime import constants as c
from runtime.broker import topology
from runtime.destinations import Destinations, build_record
from runtime.models import FunctionDestination, QueueDestination, WebhookDestination
from runtime.settings import load_settings
from runtime.webhooks import AiohttpWebhooks
from tests.harness import WEBHOOK_ALLOWED_NETWORKS, NoBroker

AMQP_URL = os.environ.get("FNHOST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/fnhost-test")
SECRET = "s3cr3t-" + secrets.token_hex(4)
REFUSED = {"status": "refused", "attempts": 1, "error": "address not allowed"}

pytestmark = pytest.mark.timeout(60)


class Receiver:
    """An HTTP/1.1 server on a loopback address that counts connections and requests and
    answers each with `status` (and `extra` header lines)."""

    def __init__(self, host: str, port: int = 0, status: str = "200 OK", extra: str = "") -> None:
        self.host, self.port, self.status, self.extra = host, port, status, extra
        self.connections = 0
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(line.decode("latin-1").strip())
                writer.write(f"HTTP/1.1 {self.status}\r\nContent-Length: 0\r\n{self.extra}\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class TableResolver(AbstractResolver):
    """Names from `names` (each lookup takes the next answer; the last one stays), numeric
    hosts as the system reads them, without any lookup; any other name is unknown."""

    def __init__(self, names: dict[str, list[list[str]]] | None = None) -> None:
        self.names = names or {}
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host in self.names:
            answers = self.names[host]
            addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
            addresses = [str(info[4][0]) for info in infos]
        return [
            ResolveResult(hostname=host, host=address, port=port,
                          family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for address in addresses
        ]

    async def close(self) -> None:
        pass


def settings(**overrides: Any) -> Any:
    return load_settings(
        webhook_timeout_s=2.0, webhook_retry_attempts=3, webhook_backoff_s=0.05,
        webhook_allowed_networks=WEBHOOK_ALLOWED_NETWORKS, **overrides,
    )


async def started(resolver: TableResolver | None = None, **overrides: Any) -> Destinations:
    s = settings(**overrides)
    d = Destinations(s, cast(Any, NoBroker()), None, AiohttpWebhooks(s, resolver or TableResolver()))
    await d.start()
    return d


@pytest.fixture
async def destinations() -> AsyncIterator[Destinations]:
    d = await started()
    yield d
    await d.close()


def a_record(n: int = 1) -> dict[str, Any]:
    return build_record(
        request_id=f"req-{n}", task_id=f"task-{n}", function="f", version="v1", condition="Success",
        invoke_count=1, payload=b"{}", content_type="application/json", status_code=200,
        function_error=None, result=b"null", result_content_type="application/json",
    )


def shown(delivery: Any) -> dict[str, Any]:
    out = delivery.to_dict()
    return {k: out[k] for k in ("status", "attempts", "error")}


async def deliver(d: Destinations, url: str, n: int = 1) -> Any:
    return await d.deliver("t1", WebhookDestination(type="webhook", url=url), a_record(n))


# -- literal addresses, any spelling ----------------------------------------------------


@pytest.mark.parametrize("host", [
    "127.0.0.2", "0x7f000002", "017700000002", "2130706434", "127.2", "0x7f.0.0.2", "127.0.0.0x2",
    "[::ffff:127.0.0.2]", "[::ffff:7f00:2]",
])
async def test_every_spelling_of_a_refused_address_is_refused(destinations: Destinations, host: str) -> None:
    async with Receiver("127.0.0.2") as receiver:
        delivery = await deliver(destinations, receiver.url(host))
    assert shown(delivery) == REFUSED, delivery
    assert receiver.connections == 0


@pytest.mark.parametrize("host", ["[::1]", "[0:0:0:0:0:0:0:1]"])
async def test_ipv6_loopback_is_refused(destinations: Destinations, host: str) -> None:
    async with Receiver("::1") as receiver:
        delivery = await deliver(destinations, receiver.url(host))
    assert shown(delivery) == REFUSED, delivery
    assert receiver.connections == 0


async def test_an_allowed_network_is_reached(destinations: Destinations) -> None:
    async with Receiver("127.0.0.1") as receiver:
        delivery = await deliver(destinations, receiver.url())
    assert shown(delivery) == {"status": "delivered", "attempts": 1, "error": None}, delivery
    assert receiver.requests == ["POST /hook HTTP/1.1"]


async def test_nothing_is_allowed_by_default() -> None:
    s = load_settings(webhook_timeout_s=2.0)
    d = Destinations(s, cast(Any, NoBroker()), None, AiohttpWebhooks(s, TableResolver()))
    await d.start()
    try:
        async with Receiver("127.0.0.1") as receiver:
            delivery = await deliver(d, receiver.url())
    finally:
        await d.close()
    assert shown(delivery) == REFUSED, delivery
    assert receiver.connections == 0


async def test_a_refusal_tells_nothing_of_what_is_there(destinations: Destinations) -> None:
    """A listening port and a closed one on a refused address get the same answer, at once:
    the scheduler is no port scanner."""
    async with Receiver("127.0.0.2") as listening:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
            closed_port = sock.getsockname()[1]
        started_at = time.monotonic()
        one = await deliver(destinations, listening.url())
        other = await deliver(destinations, f"http://127.0.0.2:{closed_port}/hook")
        took = time.monotonic() - started_at
    assert shown(one) == shown(other) == REFUSED, (one, other)
    assert took < 1.0
    assert listening.connections == 0


# -- names, resolved at each connection ---------------------------------------------------


async def test_a_name_that_resolves_to_a_refused_address_is_refused() -> None:
    resolver = TableResolver({"hooks.test": [["127.0.0.2"]], "six.test": [["::1"]]})
    d = await started(resolver)
    try:
        async with Receiver("127.0.0.2") as v4, Receiver("::1") as v6:
            first = await deliver(d, v4.url("hooks.test"))
            second = await deliver(d, v6.url("six.test"))
    finally:
        await d.close()
    assert shown(first) == shown(second) == REFUSED, (first, second)
    assert v4.connections == v6.connections == 0
    assert set(resolver.lookups) == {"hooks.test", "six.test"}


async def test_of_a_name_s_addresses_only_the_allowed_ones_are_reached() -> None:
    async with Receiver("127.0.0.1") as allowed:
        async with Receiver("127.0.0.2", port=allowed.port) as refused:
            resolver = TableResolver({"both.test": [["127.0.0.2", "127.0.0.1"]]})
            d = await started(resolver)
            try:
                delivery = await deliver(d, allowed.url("both.test"))
            finally:
                await d.close()
    assert delivery.status == "delivered", delivery
    assert refused.connections == 0
    assert allowed.requests == ["POST /hook HTTP/1.1"]


async def test_dns_rebinding_is_caught_at_the_next_connection() -> None:
    """A name that resolved to an allowed address once and to a refused one the next time:
    the check is on the address connected to, each time, not on an earlier lookup."""
    async with Receiver("127.0.0.1", extra="Connection: close\r\n") as allowed:
        async with Receiver("127.0.0.2", port=allowed.port) as refused:
            resolver = TableResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
            s = settings()
            webhooks = AiohttpWebhooks(s, resolver)
            d = Destinations(s, cast(Any, NoBroker()), None, webhooks)
            await d.start()
            try:
                first = await deliver(d, allowed.url("rebind.test"), 1)
                # The connection was closed after the answer; the next one resolves anew.
                session = webhooks._session
                assert session is not None
                cast(Any, session.connector).clear_dns_cache()
                second = await deliver(d, allowed.url("rebind.test"), 2)
            finally:
                await d.close()
    assert first.status == "delivered", first
    assert shown(second) == REFUSED, second
    assert resolver.lookups == ["rebind.test", "rebind.test"]
    assert refused.connections == 0
    assert len(allowed.requests) == 1


# -- redirects, credentials ---------------------------------------------------------------


@pytest.mark.parametrize("status", ["302 Found", "307 Temporary Redirect", "308 Permanent Redirect"])
async def test_a_redirect_to_a_refused_address_is_not_followed(destinations: Destinations, status: str
                                                                ) -> None:
    async with Receiver("127.0.0.2") as target:
        extra = f"Location: {target.url()}\r\n"
        async with Receiver("127.0.0.1", status=status, extra=extra) as hook:
            delivery = await deliver(destinations, hook.url())
    assert delivery.status == "failed" and delivery.attempts == 1, delivery
    assert delivery.error == f"HTTP {status}"
    assert len(hook.requests) == 1
    assert target.connections == 0


async def test_credentials_in_a_stored_url_are_never_sent(
    destinations: Destinations, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Receiver("127.0.0.1") as receiver:
        url = receiver.url(f"user:{SECRET}@127.0.0.1")
        delivery = await deliver(destinations, url)
    assert shown(delivery) == {
        "status": "refused", "attempts": 1, "error": "credentials in the URL are not allowed"
    }, delivery
    assert receiver.connections == 0
    assert SECRET not in caplog.text
    assert "127.0.0.1" in caplog.text  # the failure is logged, by host


# -- the other destination types ---------------------------------------------------------


async def test_queue_and_function_destinations_are_unaffected() -> None:
    """With nothing allowed to webhooks, a queue destination on the broker (at 127.0.0.1)
    and a function destination are delivered as before."""
    submitted: list[str] = []

    async def submit(tenant: str, function: str, body: bytes, content_type: str,
                     chain_depth: int) -> str:
        submitted.append(function)
        return "task-2"

    tenant = "t" + secrets.token_hex(6)
    connection = await topology.connect(AMQP_URL)
    d = Destinations(load_settings(amqp_url=AMQP_URL), connection, submit)
    await d.start()
    queue = c.destination_queue(tenant, "done")
    try:
        to_queue = await d.deliver(tenant, QueueDestination(type="queue", name="done"), a_record())
        to_function = await d.deliver(tenant, FunctionDestination(type="function", name="next"), a_record())
    finally:
        await d.close()
        channel = await connection.channel()
        await channel.queue_delete(queue, if_unused=False, if_empty=False)
        await channel.close()
        await connection.close()
    assert (to_queue.status, to_queue.error) == ("delivered", None), to_queue
    assert (to_function.status, to_function.error) == ("delivered", None), to_function
    assert submitted == ["next"]
