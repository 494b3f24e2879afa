"""The direct hop over real TCP on 127.0.0.1: requests and replies, the link's
failures, and the liveness probe."""

from __future__ import annotations

import asyncio
import secrets
import socket
from typing import Any

import pytest
import uvloop

from runtime import constants as c
from runtime import frames
from runtime.broker.membership import Membership
from runtime.errors import Unavailable
from runtime.hop import HopClient, HopLink, HopProbe, HopServer, new_nonce, proof

KEY = b"k" * 32


async def never_called(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
    raise AssertionError(f"a probe reached the sync handler: {header}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_running_scheduler_answers_a_ping_and_a_stopped_one_does_not() -> None:
    server = HopServer(KEY, never_called)
    await server.start("127.0.0.1:0", None)
    client = HopClient(KEY)
    try:
        assert await client.ping(server.address, 2.0)
        await server.close()
        client.close()
        assert not await client.ping(server.address, 2.0)
    finally:
        client.close()
        await server.close()


async def test_the_probe_keeps_a_silent_scheduler_live_while_it_answers() -> None:
    clock = FakeClock()
    membership = Membership(0.5, clock=clock)
    server = HopServer(KEY, never_called)
    await server.start("127.0.0.1:0", None)
    client = HopClient(KEY)
    probe = HopProbe(membership, client, 0.5)
    try:
        membership.on_control({"kind": c.CTL_HEARTBEAT, "scheduler": "s1", "address": server.address})
        clock.now += 1.4  # heartbeats stopped: the bus is down
        await probe.probe()
        clock.now += 1.4
        assert [m.id for m in membership.live()] == ["s1"]
        await server.close()
        client.close()  # the scheduler is gone: its link and listener with it
        await probe.probe()
        clock.now += 0.2
        assert membership.live() == []
    finally:
        client.close()
        await server.close()


async def echo(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
    """Answers after `delay` seconds with the request's `n` and its body reversed."""
    await asyncio.sleep(float(header.get("delay", 0)))
    return {"status": "ok", "n": header["n"]}, body[::-1]


async def answers_out_of_order_and_large_bodies() -> None:
    server = HopServer(KEY, echo)
    await server.start("127.0.0.1:0", None)
    client = HopClient(KEY)
    try:
        slow = asyncio.create_task(client.call(server.address, {"n": 1, "delay": 0.3}, b"ab", 5))
        await asyncio.sleep(0.05)  # sent first
        meta, body = await client.call(server.address, {"n": 2}, b"xyz", 5)
        assert (meta["n"], body) == (2, b"zyx")
        assert not slow.done()  # the second request was answered first
        assert (await slow)[0]["n"] == 1
        # Larger than the transports' buffers: written and read across many chunks.
        big = bytes(range(256)) * (24 << 10)
        meta, body = await client.call(server.address, {"n": 3}, big, 10)
        assert meta["n"] == 3 and body == big[::-1]
    finally:
        client.close()
        await server.close()


async def test_requests_are_answered_in_any_order_and_bodies_of_any_size() -> None:
    await answers_out_of_order_and_large_bodies()


def test_the_hop_works_on_uvloop_as_the_gateway_and_scheduler_run_it() -> None:
    uvloop.run(answers_out_of_order_and_large_bodies())


async def test_both_ends_of_a_link_send_small_frames_at_once() -> None:
    server = HopServer(KEY, echo)
    await server.start("127.0.0.1:0", None)
    link = HopLink(server.address, KEY)
    try:
        await link.call({"n": 1}, b"", 5)
        [accepted] = server.connections
        for end in (link._side, accepted):
            assert end is not None and end._transport is not None
            sock = end._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        link.close()
        await server.close()


async def test_a_link_with_another_key_is_refused_and_its_call_fails_at_once() -> None:
    server = HopServer(KEY, echo)
    await server.start("127.0.0.1:0", None)
    link = HopLink(server.address, b"another key")
    try:
        with pytest.raises(Unavailable, match="failed the cluster handshake"):
            await asyncio.wait_for(link.call({"n": 1}, b"", 30), 5)
        await asyncio.sleep(0.1)
        assert server.connections == set()
    finally:
        link.close()
        await server.close()


async def test_a_scheduler_that_goes_away_fails_the_calls_in_flight_at_once() -> None:
    server = HopServer(KEY, echo)
    await server.start("127.0.0.1:0", None)
    link = HopLink(server.address, KEY)
    try:
        waiting = asyncio.create_task(link.call({"n": 1, "delay": 30}, b"", 60))
        await asyncio.sleep(0.1)
        await server.close()
        with pytest.raises(Unavailable, match="lost the connection"):
            await asyncio.wait_for(waiting, 5)
        assert link.closed
    finally:
        link.close()
        await server.close()


# The handshake: the cluster key never crosses the wire, and each side proves itself.


class RawPeer:
    """A bare TCP peer that speaks frames: what an attacker without the key can do."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = frames.FrameParser()
        self.received: list[tuple[dict[str, Any], bytes]] = []

    @classmethod
    async def connect(cls, address: str) -> RawPeer:
        host, _, port = address.rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.writer.write(frames.pack(header, body))

    async def next_frame(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The next frame's header; None when the other side closed the connection."""
        while not self.received:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.received += self.parser.feed(data)
        return self.received.pop(0)[0]

    def close(self) -> None:
        self.writer.close()


async def recording(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
    CALLS.append(header)
    return {"status": "ok"}, b"ran"


CALLS: list[dict[str, Any]] = []


@pytest.mark.parametrize("opening", [
    {"op": "invoke", "id": 1, "tenant": "t", "function": "f"},  # no handshake at all
    {"op": "ping", "id": 1},
    {"op": "hello", "token": "what the old protocol sent in clear"},
    {"op": "hello", "nonce": "short"},
])
async def test_a_peer_without_the_handshake_is_dropped_unanswered(opening: dict[str, Any]) -> None:
    CALLS.clear()
    server = HopServer(KEY, recording)
    await server.start("127.0.0.1:0", None)
    peer = await RawPeer.connect(server.address)
    try:
        peer.send(opening)
        peer.send({"op": "invoke", "id": 2, "tenant": "t", "function": "f"})
        assert await peer.next_frame() is None  # closed without an answer
        assert CALLS == []
    finally:
        peer.close()
        await server.close()


async def test_a_peer_with_a_wrong_proof_gets_a_challenge_and_nothing_more() -> None:
    CALLS.clear()
    server = HopServer(KEY, recording)
    await server.start("127.0.0.1:0", None)
    peer = await RawPeer.connect(server.address)
    try:
        peer.send({"op": "hello", "nonce": new_nonce()})
        challenge = await peer.next_frame()
        assert challenge is not None and challenge["op"] == "challenge"
        nonce = challenge["nonce"]
        # A guess keyed by anything but the cluster key, then requests straight after.
        peer.send({"op": "auth", "proof": proof(b"guess", "gateway", server.address, nonce, "x" * 32)})
        peer.send({"op": "invoke", "id": 1, "tenant": "t", "function": "f"})
        peer.send({"op": "ping", "id": 2})
        assert await peer.next_frame() is None
        assert CALLS == []
    finally:
        peer.close()
        await server.close()


async def test_the_right_proof_opens_the_link() -> None:
    """The handshake as a gateway makes it, by hand: what the tests above fall short of."""
    CALLS.clear()
    server = HopServer(KEY, recording)
    await server.start("127.0.0.1:0", None)
    peer = await RawPeer.connect(server.address)
    try:
        ours = new_nonce()
        peer.send({"op": "hello", "nonce": ours})
        challenge = await peer.next_frame()
        assert challenge is not None
        assert challenge["proof"] == proof(KEY, "scheduler", server.address, ours, challenge["nonce"])
        peer.send({"op": "auth", "proof": proof(KEY, "gateway", server.address, challenge["nonce"], ours)})
        peer.send({"op": "invoke", "id": 7})
        answer = await peer.next_frame()
        assert answer is not None and answer["id"] == 7 and answer["status"] == "ok"
        assert CALLS == [{"op": "invoke", "id": 7}]
    finally:
        peer.close()
        await server.close()


class Listener:
    """A TCP endpoint on 127.0.0.1 that records every byte it gets; it answers a hello
    with a challenge whose proof is made with `key` (None: random bytes), or passes
    everything on to `relay_to` (a real scheduler)."""

    def __init__(self, key: bytes | None = None, relay_to: str | None = None) -> None:
        self.key, self.relay_to = key, relay_to
        self.received = bytearray()
        self.connections = 0
        self.address = ""
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.relay_to is not None:
            host, _, port = self.relay_to.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
                while data := await src.read(65536):
                    if record:
                        self.received += data
                    dst.write(data)
                dst.close()

            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                                 return_exceptions=True)
            return
        parser = frames.FrameParser()
        while data := await reader.read(65536):
            self.received += data
            for header, _ in parser.feed(data):
                if header.get("op") == "hello":
                    ours = new_nonce()
                    made = (proof(self.key, "scheduler", self.address, header["nonce"], ours)
                            if self.key is not None else secrets.token_hex(32))
                    writer.write(frames.pack({"op": "challenge", "nonce": ours, "proof": made}))
        writer.close()

    def frames(self) -> list[dict[str, Any]]:
        return [header for header, _ in frames.FrameParser().feed(bytes(self.received))]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.mark.parametrize("key", [None, b"another cluster's key"])
async def test_a_gateway_gives_an_endpoint_that_cannot_prove_itself_nothing(key: bytes | None) -> None:
    listener = await Listener(key).start()
    client = HopClient(KEY)
    try:
        with pytest.raises(Unavailable, match="failed the cluster handshake"):
            await client.call(listener.address, {"op": "invoke", "tenant": "t"}, b"payload", 5)
        assert not await client.ping(listener.address, 2.0)
        sent = listener.frames()
        assert sent and all(set(f) == {"op", "nonce"} and f["op"] == "hello" for f in sent), sent
        assert b"payload" not in listener.received and KEY not in listener.received
    finally:
        client.close()
        await listener.close()


async def test_a_relay_to_a_real_scheduler_cannot_pass_its_proof_on() -> None:
    """An endpoint that forwards the handshake to a real scheduler gets the gateway no
    further: the scheduler's proof names its own address, not the relay's."""
    CALLS.clear()
    server = HopServer(KEY, recording)
    await server.start("127.0.0.1:0", None)
    relay = await Listener(relay_to=server.address).start()
    client = HopClient(KEY)
    try:
        with pytest.raises(Unavailable, match="failed the cluster handshake"):
            await client.call(relay.address, {"op": "invoke"}, b"payload", 5)
        assert [f["op"] for f in relay.frames()] == ["hello"]
        assert CALLS == []
        # The real scheduler, dialled at its own address, takes the same gateway.
        meta, body = await client.call(server.address, {"op": "invoke"}, b"", 5)
        assert (meta["status"], body) == ("ok", b"ran")
    finally:
        client.close()
        await relay.close()
        await server.close()


async def test_a_peer_without_the_key_cannot_make_the_scheduler_hold_a_large_frame() -> None:
    CALLS.clear()
    server = HopServer(KEY, recording)
    await server.start("127.0.0.1:0", None)
    peer = await RawPeer.connect(server.address)
    try:
        # The prefix of a 60 MB frame, and its first 64 KB: dropped, not buffered to the end.
        frame = frames.pack({"op": "hello", "nonce": new_nonce()}, b"x" * (60 << 20))
        peer.writer.write(frame[: 64 << 10])
        assert await peer.next_frame() is None
        assert CALLS == [] and server.connections == set()
    finally:
        peer.close()
        await server.close()
