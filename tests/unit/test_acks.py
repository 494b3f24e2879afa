"""Acks sent together: a multiple ack for the settled run, single acks above a running task."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from runtime.scheduler.acks import Acks


@dataclass(eq=False)  # hashed by identity, as a real channel
class Channel:
    is_closed: bool = False
    sent: list[tuple[int, bool]] = field(default_factory=list)


@dataclass
class Message:
    channel: Channel
    delivery_tag: int

    async def ack(self, multiple: bool = False) -> None:
        self.channel.sent.append((self.delivery_tag, multiple))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_run_of_done_messages_is_one_multiple_ack() -> None:
    acks, channel = Acks(), Channel()
    messages = [Message(channel, tag) for tag in range(1, 6)]
    for m in messages:
        acks.taken(m)  # type: ignore[arg-type]
    for m in messages:
        acks.done(m)  # type: ignore[arg-type]
    await settle()
    assert channel.sent == [(5, True)]


async def test_a_running_task_does_not_hold_back_later_acks() -> None:
    acks, channel = Acks(), Channel()
    m: list[Any] = [Message(channel, tag) for tag in range(1, 6)]
    for x in m:
        acks.taken(x)
    for x in (m[0], m[1], m[3]):  # 3 and 5 still run
        acks.done(x)
    await settle()
    assert channel.sent == [(2, True), (4, False)]
    acks.done(m[2])
    await settle()
    assert channel.sent[2:] == [(3, True)]
    acks.done(m[4])
    await settle()
    assert channel.sent[3:] == [(5, True)]


async def test_a_forgotten_message_is_not_waited_for() -> None:
    acks, channel = Acks(), Channel()
    m: list[Any] = [Message(channel, tag) for tag in range(1, 4)]
    for x in m:
        acks.taken(x)
    acks.forget(m[0])  # nacked: settled otherwise
    acks.done(m[1])
    acks.done(m[2])
    await settle()
    assert channel.sent == [(3, True)]


async def test_nothing_is_sent_on_a_closed_channel() -> None:
    acks, channel = Acks(), Channel()
    m: Any = Message(channel, 1)
    acks.taken(m)
    channel.is_closed = True
    acks.done(m)
    await settle()
    assert channel.sent == []


async def test_channels_are_kept_apart() -> None:
    acks, first, second = Acks(), Channel(), Channel()
    a: Any = Message(first, 1)
    b: Any = Message(second, 1)
    c: Any = Message(second, 2)
    for x in (a, b, c):
        acks.taken(x)
    acks.done(c)
    acks.done(a)
    await settle()
    assert first.sent == [(1, True)]
    assert second.sent == [(2, False)]
