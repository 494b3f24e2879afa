"""The limits an async submission meets before anything is written, whoever makes it:
the gateway for a client (gateway/throttle.py adds its metrics), or a scheduler for
a `function` destination (`FunctionDestinationSubmit`).

- a function's `max_rate` (runtime/flow/rate.py), one bucket per function shared
  by every gateway and scheduler through MongoDB;
- back-pressure (runtime/flow/backpressure.py): each process judges the queues it
  submitted to lately, from their depth (runtime/broker/backlog.py);
- the async payload limit (FNHOST_ASYNC_PAYLOAD_LIMIT);
- for a function destination, the depth of its chain: a task submitted by a
  function destination carries how many function destinations led to it, and
  past FNHOST_DESTINATION_CHAIN_MAX the next one is refused, so a function whose
  `on_success` is itself stops.

A refusal is an exception of runtime/errors.py: Throttled (may pass later),
PayloadTooLarge or DestinationChainTooLong (never will).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from runtime import constants as c
from runtime.cache import FunctionCache
from runtime.errors import BadRequest, NotFound, PayloadTooLarge, Throttled
from runtime.flow.backpressure import Backpressure
from runtime.flow.rate import Lease
from runtime.store.functions import FunctionRecord
from runtime.store.rates import RateStore, rate_key
from runtime.tasks.quotas import QuotaKeeper
from runtime.tasks.submit import Submission, Submitter

# Functions whose leases a process keeps; the least recently used goes first.
MAX_LEASES = 100_000


class DestinationChainTooLong(BadRequest):
    code = "destination_chain_too_long"


class RateLimiter:
    """This process's leases of the tokens of every function with a max_rate."""

    def __init__(self, store: RateStore, clock: Callable[[], float] = time.time) -> None:
        # Wall-clock time: the buckets are shared by processes on several hosts.
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


def _throttled(message: str, wait_s: float) -> Throttled:
    return Throttled(message, retry_after_s=max(1, math.ceil(wait_s)))


async def rate_refusal(limiter: RateLimiter, record: FunctionRecord) -> Throttled | None:
    """The refusal of an invocation over its function's max_rate (none: never refused)."""
    rate = record.config.max_rate
    if rate is None:
        return None
    wait = await limiter.admit(record.tenant, record.name, rate)
    if wait is None:
        return None
    return _throttled(
        f"function {record.name!r} is over its max_rate of {rate:g} invocations per second", wait
    )


def backlog_refusal(backpressure: Backpressure, record: FunctionRecord) -> Throttled | None:
    """The refusal of an async submission by back-pressure, if it refuses this one."""
    refusal = backpressure.check((record.tenant, record.name), queue_of(record))
    if refusal is None:
        return None
    work = "" if refusal.wait_s is None else f", about {refusal.wait_s:.0f} s of work"
    wait_threshold = "" if backpressure.max_wait_s is None else f", {backpressure.max_wait_s:g} s of work"
    return _throttled(
        f"too many asynchronous invocations are waiting: {refusal.depth} messages in "
        f"the queue{work}, the oldest about {refusal.age_s:.0f} s old (thresholds: "
        f"{backpressure.max_messages} messages{wait_threshold}, "
        f"{backpressure.max_age_s:g} s old); "
        "this function's share of the backlog is large: submit more slowly",
        refusal.retry_after_s,
    )


def check_chain(chain_depth: int, max_depth: int, function: str) -> None:
    """Refuse a function destination's submission past the chain's depth limit."""
    if chain_depth > max_depth:
        raise DestinationChainTooLong(
            f"not submitted to function {function!r}: it would be function destination "
            f"{chain_depth} in a row, over the limit of {max_depth} "
            "(a chain of function destinations, such as a function whose destination is itself, "
            "stops there)"
        )


def check_payload(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise PayloadTooLarge(f"{what} of {size} bytes is over the {limit}-byte async payload limit")


class FunctionDestinationSubmit:
    """The `function` destination's submit (runtime/destinations.py `Submit`): an async
    invocation of another function of the tenant, through the same limits as one
    from a client, plus the chain's depth."""

    def __init__(
        self, cache: FunctionCache, submitter: Submitter, limiter: RateLimiter,
        backpressure: Backpressure, quotas: QuotaKeeper | None, *, payload_limit: int,
        max_chain: int,
    ) -> None:
        self._cache = cache
        self._submitter = submitter
        self._limiter = limiter
        self._backpressure = backpressure
        self._quotas = quotas
        self._payload_limit = payload_limit
        self._max_chain = max_chain

    async def __call__(
        self, tenant: str, function: str, body: bytes, content_type: str, chain_depth: int
    ) -> str:
        check_chain(chain_depth, self._max_chain, function)
        record = await self._cache.get(tenant, function)
        if record is None:
            raise NotFound(f"destination function {function!r} not found")
        check_payload(len(body), self._payload_limit, "the destination record")
        # As on the gateway: back-pressure first (no round trip, and a refused
        # submission takes no token of the function's max_rate).
        refusal = backlog_refusal(self._backpressure, record)
        if refusal is None:
            refusal = await rate_refusal(self._limiter, record)
        if refusal is not None:
            raise refusal
        if self._quotas is not None:
            await self._quotas.admit_task(record, len(body))  # QuotaExceeded past it
        try:
            accepted = await self._submitter.submit(Submission(
                record=record, payload=body, content_type=content_type, chain_depth=chain_depth,
            ))
        except BaseException:
            if self._quotas is not None:
                self._quotas.release(record, len(body))
            raise
        if self._quotas is not None:
            self._quotas.accepted(record, datetime.now(UTC), len(body))
        if accepted.due_at is None:
            self._backpressure.enqueued(queue_of(record))
        return accepted.task_id
