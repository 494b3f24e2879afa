"""Whoever speaks on the broker: a forged heartbeat gets neither the cluster secret nor
traffic, and the scheduler's sync hop serves no one without the secret.

The platform runs on a RabbitMQ vhost of its own; the test publishes on its control
exchange as any client with broker access could, naming a listener of its own on
127.0.0.1 as a scheduler that wins the test tenant (rendezvous hashing).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import httpx
import orjson
import pytest

from runtime import constants as c
from runtime import frames
from runtime.broker import topology
from runtime.broker.control import CONTROL_KEY, H_MAC, H_SENT_MS, event_mac
from runtime.broker.membership import rendezvous
from runtime.hop import HOP_KEY, new_nonce, proof
from runtime.settings import Settings, load_settings
from tests.harness import MongoServer, Platform, deploy, function_zip, invoke, own_platform, returns

FORGING_S = 3.0


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection and byte; it answers a
    hello with a challenge it cannot prove (it has no key), as a forged scheduler would."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.lock = threading.Lock()
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with listener.lock:
                    listener.connections += 1
                parser = frames.FrameParser()
                self.request.settimeout(10)
                try:
                    while data := self.request.recv(65536):
                        with listener.lock:
                            listener.received += data
                        for header, _ in parser.feed(data):
                            if header.get("op") == "hello":
                                challenge = {"op": "challenge", "nonce": new_nonce(),
                                             "proof": secrets.token_hex(32)}
                                self.request.sendall(frames.pack(challenge))
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def frames(self) -> list[dict[str, Any]]:
        with self.lock:
            return [h for h, _ in frames.FrameParser().feed(bytes(self.received))]


def cluster_settings(platform: Platform) -> Settings:
    return load_settings(admin_key=platform.env["FNHOST_ADMIN_KEY"],
                         cluster_secret=platform.env["FNHOST_CLUSTER_SECRET"])


class Forger:
    """Publishes heartbeats on the platform's control exchange from a thread, every 0.1 s,
    until stopped; `sign` (a key) makes them as a scheduler with the secret would."""

    def __init__(self, amqp_url: str, event: dict[str, Any], sign: bytes | None = None,
                 headers: dict[str, Any] | None = None) -> None:
        self.amqp_url, self.event, self.sign, self.headers = amqp_url, event, sign, headers
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            exchange = await topology.control_exchange(await connection.channel())
            while not self._stop.is_set():
                body = orjson.dumps(self.event)
                headers = dict(self.headers or {})
                if self.sign is not None:
                    sent_ms = int(time.time() * 1000)
                    headers = {H_MAC: event_mac(self.sign, sent_ms, body), H_SENT_MS: sent_ms}
                await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="")
                self.sent += 1
                await asyncio.sleep(0.1)

    def __enter__(self) -> Forger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def real_heartbeat(amqp_url: str, timeout: float = 10.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next heartbeat a scheduler of the platform sends: its event and headers."""

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await topology.control_exchange(channel)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            async with queue.iterator() as messages:
                async for message in messages:
                    event = orjson.loads(message.body)
                    if event.get("kind") == c.CTL_HEARTBEAT:
                        return event, dict(message.headers or {})
        raise AssertionError("no heartbeat")

    return asyncio.run(asyncio.wait_for(read(), timeout))


@pytest.fixture(scope="module")
def isolated(mongo: MongoServer) -> Iterator[Platform]:
    """A platform alone on its vhost: a forged member wins tenants on it only."""
    with own_platform(mongo.url) as platform:
        yield platform


@pytest.fixture(scope="module")
def tenant(isolated: Platform) -> Iterator[httpx.Client]:
    client = isolated.new_tenant()
    r = deploy(client, "greeter", function_zip(returns("hello"), {"handler": "main.handler"}))
    assert r.status_code == 201, r.text
    assert invoke(client, "greeter").status_code == 200
    yield client
    client.close()


def forged_member(tenant_id: str, real: str) -> str:
    """A scheduler id that would own the tenant against the real scheduler."""
    while True:
        candidate = "forged-" + secrets.token_hex(4)
        if rendezvous(tenant_id, sorted([real, candidate])) == candidate:
            return candidate


def invocations_meanwhile(client: httpx.Client, seconds: float) -> list[int]:
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses.append(invoke(client, "greeter").status_code)
        time.sleep(0.05)
    return statuses


def test_forged_heartbeats_get_no_connection_and_no_traffic(isolated: Platform, tenant: httpx.Client) -> None:
    settings = cluster_settings(isolated)
    amqp_url = isolated.env["FNHOST_AMQP_URL"]
    real, real_headers = real_heartbeat(amqp_url)
    with Listener() as listener:
        event = {**real, "scheduler": forged_member(tenant.tenant_id, real["scheduler"]),  # type: ignore[attr-defined]
                 "address": listener.address}
        # Unsigned; signed with a guessed key; the real heartbeat's signature on the forged
        # body; and the forged body stamped with that signature's time.
        forgeries = [
            Forger(amqp_url, event),
            Forger(amqp_url, event, sign=secrets.token_bytes(32)),
            Forger(amqp_url, event, headers=real_headers),
            Forger(amqp_url, event, headers={H_MAC: "0" * 64, H_SENT_MS: int(time.time() * 1000)}),
        ]
        for forger in forgeries:
            forger.__enter__()
        try:
            statuses = invocations_meanwhile(tenant, FORGING_S)
        finally:
            for forger in forgeries:
                forger.__exit__()
        assert all(f.sent >= 10 for f in forgeries), [f.sent for f in forgeries]
        assert statuses and set(statuses) == {200}, statuses
        assert listener.connections == 0 and listener.received == b""
    log = isolated.logs["gateway"].read_text()
    assert "dropped a control event 'heartbeat' of this cluster" in log, isolated.tail()
    assert settings.cluster_id == real["cluster"]


def test_even_a_signed_heartbeat_naming_an_impostor_gets_no_secret_and_no_invocation(
    isolated: Platform, tenant: httpx.Client
) -> None:
    """The positive control of the test above: a heartbeat signed with the cluster's key
    (as only a holder of the secret could make) does bring connections, so the silence
    above is the signature's doing; and the handshake still gives the impostor nothing."""
    settings = cluster_settings(isolated)
    amqp_url = isolated.env["FNHOST_AMQP_URL"]
    real, _ = real_heartbeat(amqp_url)
    with Listener() as listener:
        event = {**real, "scheduler": forged_member(tenant.tenant_id, real["scheduler"]),  # type: ignore[attr-defined]
                 "address": listener.address}
        with Forger(amqp_url, event, sign=settings.cluster_key(CONTROL_KEY)):
            time.sleep(0.5)
            statuses = invocations_meanwhile(tenant, 1.5)
        assert listener.connections >= 1
        assert 503 in statuses, statuses  # owned by the impostor, which failed the handshake
        sent = listener.frames()
        assert sent and all(f == {"op": "hello", "nonce": f["nonce"]} for f in sent), sent
        secret = isolated.env["FNHOST_CLUSTER_SECRET"].encode()
        for leaked in (secret, settings.cluster_token.encode(), b"greeter", tenant.tenant_id.encode()):  # type: ignore[attr-defined]
            assert leaked not in listener.received
    # Its heartbeats stopped: the tenant is back on the real scheduler within three beats.
    deadline = time.monotonic() + 10
    while invoke(tenant, "greeter").status_code != 200:
        assert time.monotonic() < deadline, isolated.tail()
        time.sleep(0.1)


class RawHop:
    """A bare client of the scheduler's hop port, without the cluster's key."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.parser = frames.FrameParser()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.sock.sendall(frames.pack(header, body))

    def answers(self) -> list[dict[str, Any]]:
        """Every frame until the scheduler closes the connection (fails if it does not)."""
        got: list[dict[str, Any]] = []
        while data := self.sock.recv(65536):
            got += [h for h, _ in self.parser.feed(data)]
        return got

    def close(self) -> None:
        self.sock.close()


def test_the_hop_port_serves_no_one_without_the_secret(isolated: Platform, tenant: httpx.Client) -> None:
    settings = cluster_settings(isolated)
    real, _ = real_heartbeat(isolated.env["FNHOST_AMQP_URL"])
    address = str(real["address"])
    host = address.rpartition(":")[0]
    assert host in ("127.0.0.1", "localhost"), address  # loopback only
    request = {c.H_TENANT: tenant.tenant_id, c.H_FUNCTION: "greeter",  # type: ignore[attr-defined]
               c.H_REQUEST_ID: "forged", "content_type": "application/json", "id": 1}
    attempts: list[list[dict[str, Any]]] = [
        [request],
        [{"op": "ping", "id": 1}],
        # What the old protocol sent in clear, had an eavesdropper kept it.
        [{"op": "hello", "token": settings.cluster_token}, request],
        [{"op": "hello", "nonce": new_nonce()}, {"op": "auth", "proof": secrets.token_hex(32)}, request],
    ]
    for frames_sent in attempts:
        hop = RawHop(address)
        try:
            for header in frames_sent:
                hop.send(header, b'{"x": 1}' if header is request else b"")
            answers = hop.answers()
        finally:
            hop.close()
        assert [a["op"] for a in answers] in ([], ["challenge"]), (frames_sent, answers)
        assert not any("status" in a for a in answers)
    # With the key, the same request is served: the refusals above are the handshake's.
    hop = RawHop(address)
    try:
        key = settings.cluster_key(HOP_KEY)
        ours = new_nonce()
        hop.send({"op": "hello", "nonce": ours})
        [challenge] = hop.parser.feed(hop.sock.recv(65536))
        theirs = challenge[0]["nonce"]
        hop.send({"op": "auth", "proof": proof(key, "gateway", address, theirs, ours)})
        hop.send({**request, c.H_REVISION: 1}, json.dumps({"x": 1}).encode())
        reply: list[tuple[dict[str, Any], bytes]] = []
        while not reply:
            reply = hop.parser.feed(hop.sock.recv(65536))
        assert reply[0][0]["id"] == 1 and reply[0][0]["status"] == "ok", reply
        assert reply[0][1] == b"hello"
    finally:
        hop.close()
