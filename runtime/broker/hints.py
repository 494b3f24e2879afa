"""Work hints: telling a tenant's schedulers that its queue has messages.

Schedulers consume a tenant's queue only while it has work (see
runtime/scheduler/consumers.py), so every process that publishes to a tenant's
queue (gateways; schedulers for timers, forwards and function destinations)
broadcasts a hint after the publish is confirmed: at most once per `interval_s`
per tenant, so a busy tenant costs one control message per interval, not one
per invocation. A scheduler keeps consuming for `queue_idle_s` after the last
hint or message; with `interval_s` well below that, a queue with messages is
always consumed. A hint lost in a broker outage is covered by the schedulers'
sweep of queue depths.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from runtime import constants as c
from runtime.broker.control import ControlBus
from runtime.settings import Settings

# Hints remembered at most (the oldest are dropped past this; a dropped one only
# means the next publish of that tenant sends a hint again).
MAX_REMEMBERED = 100_000


def hint_interval(settings: Settings) -> float:
    """Well inside the schedulers' idle period: every gateway and scheduler must agree,
    so it derives from `queue_idle_s` rather than being a setting of its own."""
    return settings.queue_idle_s / 6


class WorkHints:
    def __init__(
        self, control: ControlBus, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._control = control
        self._interval_s = interval_s
        self._clock = clock
        self._sent: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def note(self, tenant: str) -> None:
        """A message was published to the tenant's queue: hint it, unless hinted lately."""
        now = self._clock()
        if now - self._sent.get(tenant, -self._interval_s) < self._interval_s:
            return
        self._sent.pop(tenant, None)
        self._sent[tenant] = now  # newest last: the dict's order is the hints' age
        if len(self._sent) > MAX_REMEMBERED:
            for old in list(self._sent)[: len(self._sent) - MAX_REMEMBERED]:
                del self._sent[old]
        task = asyncio.ensure_future(self._control.publish_or_later(c.CTL_WORK, tenant=tenant))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
