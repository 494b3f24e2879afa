"""Queue acknowledgements, sent together.

Every message taken from the tenant queues is `taken` when it arrives and
`done` once it may be acknowledged (its outcome stored, its destination served).
Once per turn of the event loop the done messages of each channel go out: one
`multiple` ack for the run of delivery tags with nothing still running below
it, and a single ack for each done message above a running one, so a long task
never holds back the acks of the short ones behind it.

A quorum queue settles each ack as a log entry, and each ack is a frame and a
write for the scheduler: under load one multiple ack replaces tens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger(__name__)


class Acks:
    def __init__(self) -> None:
        # channel -> delivery tag -> the message once done, None while it runs
        self._open: dict[Any, dict[int, AbstractIncomingMessage | None]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._again = False

    def taken(self, message: AbstractIncomingMessage) -> None:
        self._open.setdefault(message.channel, {})[message.delivery_tag or 0] = None

    def forget(self, message: AbstractIncomingMessage) -> None:
        """It was settled otherwise (rejected, requeued)."""
        tags = self._open.get(message.channel)
        if tags is not None:
            tags.pop(message.delivery_tag or 0, None)

    def done(self, message: AbstractIncomingMessage) -> None:
        tags = self._open.get(message.channel)
        if tags is None or (message.delivery_tag or 0) not in tags:
            self._open.setdefault(message.channel, {})[message.delivery_tag or 0] = message
        else:
            tags[message.delivery_tag or 0] = message
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        else:
            self._again = True

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the acks of this turn gather
        while True:
            self._again = False
            for channel, tags in list(self._open.items()):
                await self._flush_channel(channel, tags)
            if not self._again:
                return

    async def _flush_channel(
        self, channel: Any, tags: dict[int, AbstractIncomingMessage | None]
    ) -> None:
        if getattr(channel, "is_closed", False):
            # The broker redelivers what this channel had not acked.
            self._open.pop(channel, None)
            return
        last: AbstractIncomingMessage | None = None
        singles: list[AbstractIncomingMessage] = []
        running_below = False
        for tag in sorted(tags):
            message = tags[tag]
            if message is None:
                running_below = True
            elif running_below:
                singles.append(message)
            else:
                last = message
        try:
            if last is not None:
                upto = last.delivery_tag or 0
                for tag in [t for t in tags if t <= upto]:
                    del tags[tag]
                await last.ack(multiple=True)
            for message in singles:
                tags.pop(message.delivery_tag or 0, None)
                await message.ack()
        except Exception as exc:
            # The channel closed meanwhile: its unacked messages come back.
            log.warning("acks not sent (%s); the broker will redeliver those messages", exc)
        if not tags:
            self._open.pop(channel, None)
