"""Flow control on the invoke path: a function's `max_rate` (sync and async
invocations) and back-pressure on async submissions (runtime/flow/). Each refusal
is a 429 with Retry-After, counted in `fnhost_throttled_total` by tenant and reason.

A function without max_rate costs nothing here: no look-up, no round trip. One
with it costs a MongoDB round trip only when this gateway's lease of its tokens is
spent (runtime/flow/rate.py). Back-pressure costs a few dictionary look-ups: the
queue depths it acts on are read in the background (gateway/backlog.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.metrics import INVOCATIONS, THROTTLED
from runtime import constants as c
from runtime.errors import Throttled
from runtime.flow.backpressure import Backpressure
from runtime.flow.rate import Lease
from runtime.store.functions import FunctionRecord
from runtime.store.rates import RateStore, rate_key

BACKLOG, RATE = "backlog", "rate"
# Functions whose leases a gateway keeps; the least recently used goes first.
MAX_LEASES = 100_000


class RateLimiter:
    """This gateway's leases of the tokens of every function with a max_rate."""

    def __init__(self, store: RateStore, clock: Callable[[], float] = time.time) -> None:
        # Wall-clock time: the buckets are shared by gateways on several hosts.
        self._store = store
        self._clock = clock
        self._leases: OrderedDict[str, tuple[Lease, asyncio.Lock]] = OrderedDict()

    async def admit(self, tenant: str, function: str, rate: float) -> float | None:
        """None: admitted; otherwise the seconds until the function's next token is due."""
        key = rate_key(tenant, function)
        now = self._clock()
        lease, lock = self._entry(key, now)
        wait = lease.spend(now)
        if wait is not None:
            return None if wait == 0 else wait
        # One refill in flight per function: requests arriving meanwhile wait for it
        # and share its tokens rather than each asking the database.
        async with lock:
            now = self._clock()
            wait = lease.spend(now, counted=False)
            if wait is not None:
                return None if wait == 0 else wait
            grant = await self._store.take(key, rate, lease.want(rate), now, lease.known_tat)
            lease.refill(grant, now)
            return None if grant.tokens else grant.wait_s

    def _entry(self, key: str, now: float) -> tuple[Lease, asyncio.Lock]:
        entry = self._leases.get(key)
        if entry is None:
            entry = self._leases[key] = (Lease(now), asyncio.Lock())
            if len(self._leases) > MAX_LEASES:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(key)
        return entry


def queue_of(record: FunctionRecord) -> str:
    """The queue the function's async invocations go to: its own when promoted or
    pinned, else its tenant's."""
    mode = getattr(record, "queue_mode", None)
    routed = record.config.dedicated_queue if mode is None else mode != "shared"
    return c.function_queue(record.tenant, record.name) if routed else c.tenant_queue(record.tenant)


def _refused(record: FunctionRecord, kind: str, reason: str, message: str, wait_s: float) -> Throttled:
    THROTTLED.labels(record.tenant, reason).inc()
    INVOCATIONS.labels(kind, "throttled").inc()
    return Throttled(message, retry_after_s=max(1, math.ceil(wait_s)))


async def check_rate(limiter: RateLimiter, record: FunctionRecord, kind: str) -> None:
    """Raise Throttled when the function is over its max_rate (none: nothing to do)."""
    rate = record.config.max_rate
    if rate is None:
        return
    wait = await limiter.admit(record.tenant, record.name, rate)
    if wait is not None:
        raise _refused(record, kind, RATE,
                       f"function {record.name!r} is over its max_rate of {rate:g} invocations "
                       "per second", wait)


def check_backlog(backpressure: Backpressure, record: FunctionRecord, kind: str) -> None:
    """Raise Throttled when back-pressure refuses this async submission."""
    refusal = backpressure.check((record.tenant, record.name), queue_of(record))
    if refusal is not None:
        work = "" if refusal.wait_s is None else f", about {refusal.wait_s:.0f} s of work"
        wait_threshold = ("" if backpressure.max_wait_s is None
                          else f", {backpressure.max_wait_s:g} s of work")
        raise _refused(
            record, kind, BACKLOG,
            f"too many asynchronous invocations are waiting: {refusal.depth} messages in "
            f"the queue{work}, the oldest about {refusal.age_s:.0f} s old (thresholds: "
            f"{backpressure.max_messages} messages{wait_threshold}, "
            f"{backpressure.max_age_s:g} s old); "
            "this function's share of the backlog is large: submit more slowly",
            refusal.retry_after_s,
        )
