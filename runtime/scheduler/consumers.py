"""Which tenant queues this scheduler consumes, and the durable timers it fires.

Each tenant queue is consumed by `queue_owners` schedulers, chosen by
rendezvous hashing over the live schedulers (shuffle sharding): a tenant's
burst or poison input reaches only its few schedulers, and when a scheduler
dies its tenants move to the next ones without coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from runtime import constants as c
from runtime.broker import topology
from runtime.broker.membership import Membership, owners
from runtime.broker.publisher import InvokePublisher
from runtime.scheduler.tasks import TaskRunner
from runtime.settings import Settings
from runtime.store.mongo import Mongo
from runtime.store.tasks import TaskStore
from runtime.store.timers import TimerStore

log = logging.getLogger(__name__)
RECONCILE_S = 1.0


class QueueConsumers:
    def __init__(
        self,
        settings: Settings,
        connection: AbstractRobustConnection,
        membership: Membership,
        mongo: Mongo,
        runner: TaskRunner,
    ) -> None:
        self._settings = settings
        self._connection = connection
        self._membership = membership
        self._mongo = mongo
        self._runner = runner
        self._tenants: set[str] = set()
        self._consuming: dict[str, tuple[AbstractQueue, str]] = {}
        self._channel: AbstractChannel | None = None
        self._dead_channel: AbstractChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._settings.async_prefetch)
        await self._load_tenants()
        await topology.drop_legacy_dead_letters(self._connection)
        # A channel of its own: the task channel's acks go out as multiple acks,
        # which must never cover a dead letter still being handled.
        self._dead_channel = await self._connection.channel()
        await self._dead_channel.set_qos(prefetch_count=16)
        dead = await topology.dead_letters(self._dead_channel, self._settings.cluster_id)
        await dead.consume(self._dead_letter)
        self._task = asyncio.create_task(self._loop(), name="queue-consumers")

    async def _dead_letter(self, message: AbstractIncomingMessage) -> None:
        """Every cluster on the vhost gets a copy of each dead letter: handle ours."""
        tenant = str((message.headers or {}).get(c.H_TENANT, ""))
        if tenant not in self._tenants:
            if await self._mongo.tenants.find_one({"_id": tenant}, {"_id": 1}) is None:
                await message.ack()  # another cluster's tenant: that cluster has its copy
                return
            self._tenants.add(tenant)
        await self._runner.dead_letter(message)

    async def on_control(self, event: dict[str, Any]) -> None:
        if event.get("kind") == c.CTL_TENANT:
            self._tenants.add(str(event["tenant"]))
            self._wake.set()
        elif event.get("kind") == c.CTL_RESYNC:
            # Back from a broker outage: tenants created meanwhile were not announced.
            await self._load_tenants()
            self._wake.set()

    async def _load_tenants(self) -> None:
        async for doc in self._mongo.tenants.find({}, {"_id": 1}):
            self._tenants.add(str(doc["_id"]))

    def owned(self) -> set[str]:
        live = sorted(m.id for m in self._membership.live())
        me = self._settings.scheduler_id
        if me not in live:
            live.append(me)
        k = self._settings.queue_owners
        return {t for t in self._tenants if me in owners(t, live, k)}

    async def _loop(self) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception:
                log.exception("could not reconcile queue consumers")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECONCILE_S)

    async def _reconcile(self) -> None:
        assert self._channel is not None
        wanted = self.owned()
        for tenant in wanted - self._consuming.keys():
            queue = await topology.tenant_queue(self._channel, tenant)
            tag = await queue.consume(self._runner.handle)
            self._consuming[tenant] = (queue, tag)
            log.info("consuming %s", c.tenant_queue(tenant))
        for tenant in set(self._consuming) - wanted:
            queue, tag = self._consuming.pop(tenant)
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            log.info("stopped consuming %s", c.tenant_queue(tenant))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for queue, tag in self._consuming.values():
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consuming.clear()


class TimerLoop:
    """Publishes due timers (delays, retry backoff, parked tasks) to their tenant queues."""

    BATCH = 200
    LEASE_S = 30.0

    def __init__(self, timers: TimerStore, publisher: InvokePublisher, poll_s: float) -> None:
        self._timers = timers
        self._publisher = publisher
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="timers")

    async def _loop(self) -> None:
        while True:
            fired = 0
            try:
                fired = await self.fire_due()
            except Exception:
                log.exception("firing timers failed; will try again")
            if fired < self.BATCH:
                await asyncio.sleep(self._poll_s)

    async def fire_due(self) -> int:
        docs = await self._timers.claim_due(self.BATCH, self.LEASE_S)

        async def fire(doc: dict[str, Any]) -> None:
            await self._publisher.publish(
                str(doc["tenant"]), dict(doc["headers"]), bytes(doc["body"]), doc.get("content_type")
            )
            await self._timers.done(doc)

        await asyncio.gather(*(fire(doc) for doc in docs))
        return len(docs)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class ExpirySweep:
    """Deletes task records past their retention, every `interval_s` (see
    TaskStore.delete_expired). Every scheduler runs it; the deletes are idempotent."""

    def __init__(self, tasks: TaskStore, interval_s: float) -> None:
        self._tasks = tasks
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="expiry-sweep")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                deleted = await self._tasks.delete_expired()
                if deleted:
                    log.info("deleted %d expired task records", deleted)
            except Exception:
                log.exception("deleting expired task records failed; will try again")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
