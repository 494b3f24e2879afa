"""The direct hop over real TCP on 127.0.0.1: requests and replies, the link's
failures, and the liveness probe."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop

from runtime import constants as c
from runtime.broker.membership import Membership
from runtime.errors import Unavailable
from runtime.hop import HopClient, HopLink, HopProbe, HopServer

TOKEN = "secret-token"


async def never_called(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
    raise AssertionError(f"a probe reached the sync handler: {header}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_running_scheduler_answers_a_ping_and_a_stopped_one_does_not() -> None:
    server = HopServer(TOKEN, never_called)
    await server.start("127.0.0.1:0", None)
    client = HopClient(TOKEN)
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
    server = HopServer(TOKEN, never_called)
    await server.start("127.0.0.1:0", None)
    client = HopClient(TOKEN)
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
    server = HopServer(TOKEN, echo)
    await server.start("127.0.0.1:0", None)
    client = HopClient(TOKEN)
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
    server = HopServer(TOKEN, echo)
    await server.start("127.0.0.1:0", None)
    link = HopLink(server.address, TOKEN)
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


async def test_a_link_with_a_bad_token_is_closed_and_its_call_fails_at_once() -> None:
    server = HopServer(TOKEN, echo)
    await server.start("127.0.0.1:0", None)
    link = HopLink(server.address, "wrong-token")
    try:
        with pytest.raises(Unavailable, match="lost the connection"):
            await asyncio.wait_for(link.call({"n": 1}, b"", 30), 5)
        assert server.connections == set()
    finally:
        link.close()
        await server.close()


async def test_a_scheduler_that_goes_away_fails_the_calls_in_flight_at_once() -> None:
    server = HopServer(TOKEN, echo)
    await server.start("127.0.0.1:0", None)
    link = HopLink(server.address, TOKEN)
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
