"""Reads the backlog of the queues this process submitted to lately, off the request path.

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

from aio_pika.abc import AbstractRobustConnection

from runtime.broker.topology import DepthReader
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
        self._depths = DepthReader(connection, DECLARE_TIMEOUT_S)
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
            depth = await self._depths.read(queue)
            if depth is None:
                self._missing[queue] = time.monotonic() + MISSING_RETRY_S
                continue
            self._backpressure.observe(queue, depth[0])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._depths.close()
