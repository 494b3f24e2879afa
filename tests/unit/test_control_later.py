"""ControlBus.publish_or_later: a change already stored is broadcast once the broker takes it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from runtime.broker import control
from runtime.broker.control import ControlBus


class FlakyExchange:
    """Refuses the first `failures` publishes, as a broker that is down does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[dict[str, Any]] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.sent.append(orjson.loads(message.body))


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> ControlBus:
    monkeypatch.setattr(control, "LATER_RETRY_S", 0.01)
    return ControlBus(connection=None, cluster="c1", key=b"k")  # type: ignore[arg-type]


async def test_sent_at_once_when_the_broker_takes_it(bus: ControlBus) -> None:
    bus._exchange = exchange = FlakyExchange(0)  # type: ignore[assignment]
    await bus.publish_or_later("function", tenant="t", name="f")
    assert exchange.sent == [{"kind": "function", "tenant": "t", "name": "f", "cluster": "c1"}]


async def test_sent_later_in_order_when_the_broker_is_back(bus: ControlBus) -> None:
    bus._exchange = exchange = FlakyExchange(5)  # type: ignore[assignment]
    await bus.publish_or_later("function", tenant="t", name="a")  # refused: no exception
    await bus.publish_or_later("stop-task", key="k")
    assert exchange.sent == []
    for _ in range(200):
        if len(exchange.sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert [e["kind"] for e in exchange.sent] == ["function", "stop-task"]
    await bus.close()


async def test_close_stops_the_retries(bus: ControlBus) -> None:
    bus._exchange = exchange = FlakyExchange(10**6)  # type: ignore[assignment]
    await bus.publish_or_later("function", tenant="t", name="a")
    await bus.close()
    assert not bus._later.running
    assert exchange.sent == []


async def test_retry_later_drops_an_item_that_fails_for_another_reason() -> None:
    """Only the transient error keeps an item waiting; another one is logged and dropped."""
    from runtime.later import RetryLater

    done: list[str] = []

    async def attempt(item: str) -> None:
        if item == "broken":
            raise ValueError("not an outage")
        done.append(item)

    later: RetryLater[str] = RetryLater("test", attempt, (ConnectionError,), 0.01, limit=2)
    assert later.add("broken") and later.add("fine")
    assert not later.add("third"), "over the limit"
    for _ in range(200):
        if not later.running:
            break
        await asyncio.sleep(0.01)
    assert done == ["fine"] and len(later) == 0
