"""Moving a function between its tenant's queue and a dedicated queue of its own.

Promotion (a scheduler saw the function hold up its tenant's queue, see
runtime/scheduler/flow.py, or a gateway saw a burst of its submissions coming, see
runtime/flow/burst.py): declare and bind `fnhost.f.<tenant>.<function>`, record the move on
the function (`queue`: mode, since, reason), and broadcast it, so that every
gateway routes the function's new invocations there at once. Its messages still
in the tenant's queue, and any that land there later (a gateway that has not
heard yet, a retry timer), are forwarded by the tenant queue's consumer as they
come: published with a confirm, then acknowledged, so none is lost and none runs
twice.

Demotion (the function was quiet for `demote_after_s` and its queue is empty):
record it, broadcast it, and unbind the queue. From then on a publish to the
function's route comes back unroutable and goes to the tenant's queue, so the
dedicated queue can only drain; its consumers delete it once it is empty and
nobody else consumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from runtime import constants as c
from runtime.broker import topology
from runtime.broker.control import ControlBus
from runtime.broker.publisher import BROKER_ERRORS, InvokePublisher
from runtime.cache import FunctionCache
from runtime.store.functions import DEDICATED, SHARED, FunctionStore

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        functions: FunctionStore,
        cache: FunctionCache,
        publisher: InvokePublisher,
        connection: AbstractRobustConnection,
    ) -> None:
        self._functions = functions
        self._cache = cache
        self._publisher = publisher
        self._connection = connection
        self.control: ControlBus | None = None  # set once the control bus is up
        self._promoting: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.counters: Counter[str] = Counter()

    async def promote(self, tenant: str, function: str, reason: str) -> None:
        """Give the function a dedicated queue; concurrent callers share one move."""
        key = (tenant, function)
        pending = self._promoting.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._promote(tenant, function, reason))
            self._promoting[key] = pending
            pending.add_done_callback(lambda _f: self._promoting.pop(key, None))
        await asyncio.shield(pending)

    async def _promote(self, tenant: str, function: str, reason: str) -> None:
        async with self._channel() as channel:
            await topology.function_queue(channel, tenant, function)
        if await self._functions.set_queue(tenant, function, DEDICATED, reason):
            self.counters["promotions"] += 1
            log.info("function %s/%s promoted to %s: %s", tenant, function,
                     c.function_queue(tenant, function), reason)
        await self._announce(tenant, function, DEDICATED, reason)

    async def demote(self, tenant: str, function: str, reason: str) -> bool:
        """Back to the tenant's queue; False when it was not (or no longer) promoted."""
        if not await self._functions.set_queue(tenant, function, SHARED, reason):
            return False
        self.counters["demotions"] += 1
        log.info("function %s/%s back on its tenant's queue: %s", tenant, function, reason)
        await self._announce(tenant, function, SHARED, reason)
        await self.unbind(tenant, function)
        return True

    async def unbind(self, tenant: str, function: str) -> None:
        with contextlib.suppress(*BROKER_ERRORS):
            async with self._channel() as channel:
                await topology.unbind_function_queue(channel, tenant, function)

    async def forward(self, message: AbstractIncomingMessage, tenant: str, function: str) -> None:
        """Publish a tenant-queue message to the function's queue (confirmed): the caller
        acknowledges the original only after this returns."""
        await self._publisher.publish_to_function(
            tenant, function, dict(message.headers or {}), message.body, message.content_type
        )
        self.counters["forwarded"] += 1

    async def delete(self, tenant: str, function: str) -> None:
        async with self._channel() as channel:
            await channel.queue_delete(c.function_queue(tenant, function))
        log.info("deleted %s", c.function_queue(tenant, function))

    async def _announce(self, tenant: str, function: str, mode: str, reason: str) -> None:
        # Local state first: this scheduler must not wait for its own broadcast.
        self._cache.invalidate(tenant, function)
        if self.control is not None:
            await self.control.publish_or_later(
                c.CTL_ROUTE, tenant=tenant, function=function, mode=mode, reason=reason
            )

    @contextlib.asynccontextmanager
    async def _channel(self) -> Any:
        """A short-lived channel: a passive declare of a missing queue closes its channel."""
        channel = await self._connection.channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
