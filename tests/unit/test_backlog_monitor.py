"""The gateway's backlog reader: passive declares on a channel of its own, a missing queue
skipped for a while (the broker closed the channel: a new one is opened), a broker that
cannot be reached makes the readings stale rather than stopping the loop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from runtime.broker import backlog
from runtime.broker.backlog import BacklogMonitor
from runtime.flow.backpressure import Backpressure


class Channel:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.is_closed = False

    async def get_underlay_channel(self) -> Channel:
        return self

    async def queue_declare(self, queue: str, passive: bool) -> Any:
        assert passive and not self.is_closed
        self.broker.declares.append(queue)
        if self.broker.down:
            raise ConnectionError("broker down")
        if queue not in self.broker.depths:
            self.is_closed = True  # as the broker does on a 404
            raise ChannelNotFoundEntity(f"NOT_FOUND - no queue '{queue}'")
        return SimpleNamespace(message_count=self.broker.depths[queue])

    async def close(self) -> None:
        self.is_closed = True


class Broker:
    def __init__(self, depths: dict[str, int]) -> None:
        self.depths = depths
        self.declares: list[str] = []
        self.channels: list[Channel] = []
        self.down = False

    async def channel(self, publisher_confirms: bool = True) -> Channel:
        channel = Channel(self)
        self.channels.append(channel)
        return channel


@pytest.fixture
def bp() -> Backpressure:
    policy = Backpressure(10, 3600.0, 0.5, sample=1.0)
    for queue in ("fnhost.t.a", "fnhost.f.a.gone", "fnhost.t.b"):
        policy.check(("a", queue), queue)
    return policy


async def test_reads_every_watched_queue_and_skips_a_missing_one(bp: Backpressure) -> None:
    broker = Broker({"fnhost.t.a": 7, "fnhost.t.b": 0})
    monitor = BacklogMonitor(broker, bp, 0.5)  # type: ignore[arg-type]
    await monitor.read_all()
    gauge = bp.gauge("fnhost.t.a")
    assert gauge is not None and gauge.depth == 7 and gauge.read_at is not None
    assert broker.declares == ["fnhost.t.a", "fnhost.f.a.gone", "fnhost.t.b"]
    assert len(broker.channels) == 2  # the 404 closed the first one
    await monitor.read_all()
    assert broker.declares[3:] == ["fnhost.t.a", "fnhost.t.b"]  # the missing one waits
    assert len(broker.channels) == 2
    await monitor.close()
    assert broker.channels[-1].is_closed


async def test_a_missing_queue_is_asked_for_again_later(bp: Backpressure,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backlog, "MISSING_RETRY_S", 0.0)
    broker = Broker({"fnhost.t.a": 1, "fnhost.t.b": 2})
    monitor = BacklogMonitor(broker, bp, 0.5)  # type: ignore[arg-type]
    await monitor.read_all()
    broker.depths["fnhost.f.a.gone"] = 3  # declared meanwhile
    await monitor.read_all()
    gauge = bp.gauge("fnhost.f.a.gone")
    assert gauge is not None and gauge.depth == 3


async def test_the_loop_goes_on_through_an_outage_and_refuses_nothing_then() -> None:
    clock = SimpleNamespace(now=0.0)
    bp = Backpressure(10, 3600.0, 0.01, sample=1.0, clock=lambda: clock.now)
    bp.check(("a", "f"), "fnhost.t.a")
    broker = Broker({"fnhost.t.a": 50})
    monitor = BacklogMonitor(broker, bp, 0.01)  # type: ignore[arg-type]
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        assert bp.probability(("a", "f")) > 0
        broker.down = True
        clock.now += 10  # the readings grow stale
        await asyncio.sleep(0.05)
        assert bp.probability(("a", "f")) == 0
        assert monitor._task is not None and not monitor._task.done()
        broker.down = False
        for _ in range(5):
            bp.check(("a", "f"), "fnhost.t.a")  # the producer goes on submitting
        await asyncio.sleep(0.05)  # back: read again, refused again
        assert bp.probability(("a", "f")) > 0
    finally:
        await monitor.close()
