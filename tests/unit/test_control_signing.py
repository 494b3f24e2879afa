"""Control events are signed: a receiver takes only events MACed with the cluster's
key and stamped near its own clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from runtime.broker.control import H_MAC, H_SENT_MS, ControlBus, event_mac

KEY = b"control-key"
NOW = 1_800_000_000.0


class Capture:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        self.messages.append(message)


class Incoming:
    def __init__(self, body: bytes, headers: dict[str, Any]) -> None:
        self.body, self.headers = body, headers


def bus(key: bytes = KEY, now: float = NOW) -> ControlBus:
    return ControlBus(connection=None, cluster="c1", key=key, max_age_s=30, clock=lambda: now)  # type: ignore[arg-type]


async def sent_by(sender: ControlBus) -> Incoming:
    sender._exchange = capture = Capture()  # type: ignore[assignment]
    await sender.publish("heartbeat", scheduler="s1", address="127.0.0.1:7070")
    [message] = capture.messages
    return Incoming(message.body, dict(message.headers))


async def delivered(receiver: ControlBus, message: Incoming) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    receiver.subscribe(got.append)
    await receiver._on_message(message)  # type: ignore[arg-type]
    return got


async def test_a_signed_event_is_taken() -> None:
    message = await sent_by(bus())
    assert await delivered(bus(), message) == [orjson.loads(message.body)]


async def test_the_body_is_the_event_and_the_signature_rides_in_headers() -> None:
    message = await sent_by(bus())
    assert orjson.loads(message.body) == {
        "kind": "heartbeat", "scheduler": "s1", "address": "127.0.0.1:7070", "cluster": "c1"}
    assert message.headers[H_SENT_MS] == int(NOW * 1000)
    assert KEY not in message.body and KEY.hex() not in str(message.headers)


def forged(message: Incoming, **changes: Any) -> Incoming:
    return Incoming(changes.pop("body", message.body), {**message.headers, **changes})


@pytest.mark.parametrize("how", ["unsigned", "no time", "bad mac", "other key", "altered body",
                                 "moved in time", "not a string"])
async def test_a_forged_event_is_dropped(how: str) -> None:
    message = await sent_by(bus())
    event = orjson.loads(message.body)
    sent_ms = message.headers[H_SENT_MS]
    altered = orjson.dumps({**event, "address": "127.0.0.1:9"})
    cases = {
        "unsigned": Incoming(message.body, {}),
        "no time": Incoming(message.body, {H_MAC: message.headers[H_MAC]}),
        "bad mac": forged(message, mac="0" * 64),
        "other key": forged(message, mac=event_mac(b"guess", sent_ms, message.body)),
        "altered body": forged(message, body=altered),
        "moved in time": forged(message, sent_ms=sent_ms + 1),
        "not a string": forged(message, mac=12),
    }
    receiver = bus()
    assert await delivered(receiver, cases[how]) == []
    assert receiver.dropped == 1


@pytest.mark.parametrize("offset_s", [-31.0, 31.0])
async def test_a_stale_or_future_event_is_dropped(offset_s: float) -> None:
    message = await sent_by(bus(now=NOW + offset_s))
    assert await delivered(bus(), message) == []
    message = await sent_by(bus(now=NOW + offset_s / 2))
    assert len(await delivered(bus(), message)) == 1


async def test_another_clusters_events_are_ignored_without_counting() -> None:
    other = ControlBus(connection=None, cluster="c2", key=b"theirs", clock=lambda: NOW)  # type: ignore[arg-type]
    receiver = bus()
    assert await delivered(receiver, await sent_by(other)) == []
    assert receiver.dropped == 0
