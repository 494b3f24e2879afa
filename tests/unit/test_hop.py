"""The direct hop's liveness probe, over real TCP on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from runtime import constants as c
from runtime.broker.membership import Membership
from runtime.hop import HopClient, HopProbe, HopServer

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
