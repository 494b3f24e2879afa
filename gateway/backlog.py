"""Reads the backlog of the queues this gateway submitted to lately, off the request path.

Every `poll_s`, each queue that back-pressure watches (runtime/flow/backpressure.py)
is declared passively on a channel of the poller's own: the broker answers with the
queue's ready messages, about a quarter of a millisecond per queue here. (The
management plugin's HTTP API would give every queue in one call, but it is an
optional plugin, needs its own credentials and samples its figures only every few
seconds.) A passive declare of a queue that does not exist (a dedicated queue not
declared yet) makes the broker close the channel: the queue is skipped for a while
and the next read opens a new channel. When the broker cannot be reached, readings
stop, grow stale, and back-pressure refuses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity

from runtime.flow.backpressure import Backpressure

log = logging.getLogger(__name__)
# One passive declare longer than this means the broker is in trouble: stop the round.
DECLARE_TIMEOUT_S = 2.0
# A queue found missing is not asked for again before this long.
MISSING_RETRY_S = 5.0


class BacklogMonitor:
    def __init__(self, connection: AbstractRobustConnection, backpressure: Backpressure,
                 poll_s: float) -> None:
        self._connection = connection
        self._backpressure = backpressure
        self._poll_s = poll_s
        self._channel: AbstractChannel | None = None
        self._missing: dict[str, float] = {}  # queue -> when to ask again
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="backlog-monitor")

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.read_all()
                self._failing = False
            except Exception as exc:
                if not self._failing:  # once per outage, not every poll
                    log.warning("reading queue backlogs failed (%s): back-pressure is off "
                                "until it works again", exc)
                self._failing = True
                await self._drop_channel()
            self._backpressure.refresh()
            await asyncio.sleep(max(0.0, self._poll_s - (time.monotonic() - started)))

    async def read_all(self) -> None:
        """One round: the depth of every watched queue, one after the other (a channel
        answers one declare at a time anyway)."""
        now = time.monotonic()
        self._missing = {q: t for q, t in self._missing.items() if t > now}
        for queue in self._backpressure.watched():
            if queue in self._missing:
                continue
            channel = await self._underlay()
            try:
                declared = await asyncio.wait_for(
                    channel.queue_declare(queue, passive=True), DECLARE_TIMEOUT_S
                )
            except ChannelNotFoundEntity:
                self._missing[queue] = time.monotonic() + MISSING_RETRY_S
                await self._drop_channel()  # the broker closed it
                continue
            self._backpressure.observe(queue, int(declared.message_count or 0))

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await asyncio.wait_for(
                self._connection.channel(publisher_confirms=False), DECLARE_TIMEOUT_S
            )
        # The raw channel: aio-pika's robust channel answers a passive declare of a
        # queue it declared before from memory, with the depth of that time. (It waits
        # for a lost connection to come back: bounded.)
        return await asyncio.wait_for(self._channel.get_underlay_channel(), DECLARE_TIMEOUT_S)

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_channel()
