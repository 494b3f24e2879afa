"""Which queues this scheduler consumes, and the durable timers it fires.

Each tenant queue is consumed by `queue_owners` schedulers, chosen by
rendezvous hashing over the live schedulers (shuffle sharding): a tenant's
burst or poison input reaches only its few schedulers, and when a scheduler
dies its tenants move to the next ones without coordination.

An owner consumes a tenant's queue only while the tenant has work: an idle
tenant costs no consumer. It starts on a work hint (`CTL_WORK`, which every
publisher sends at most every `queue_idle_s / 6` per tenant, see
runtime/broker/hints.py), and stops once the queue has had no delivery and no
hint for `queue_idle_s` and is empty. A sweep of the owned queues' depths every
`queue_sweep_s`, and at once after a broker outage or an ownership change, is
the backstop for a lost hint.

A function on a dedicated queue (promoted or pinned, see routing.py) has its
queue consumed the same way, hashed by `<tenant>/<function>`, with a prefetch
of twice its max_concurrency: the queue is where its waiting messages are set
aside, durably, and only a little more than its dispatch window's worth is
taken from it at a time.
Promoted functions quiet for `demote_after_s` are demoted here; a demoted
function's queue is consumed until it is empty, then deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from runtime import constants as c
from runtime.broker import topology
from runtime.broker.control import ControlBus
from runtime.broker.membership import Membership, owners
from runtime.broker.publisher import InvokePublisher
from runtime.broker.routing import Router
from runtime.cache import FunctionCache
from runtime.scheduler.flow import Flow
from runtime.scheduler.partitions import Partitions
from runtime.scheduler.tasks import TaskRunner
from runtime.settings import Settings
from runtime.store.functions import DEDICATED, SHARED, FunctionStore
from runtime.store.mongo import Mongo
from runtime.store.tasks import TaskStore
from runtime.store.timers import OUTBOX, TimerStore

log = logging.getLogger(__name__)
RECONCILE_S = 1.0
# How often the first owner of a busy queue reads its depth.
PROBE_S = 1.0
# A function's dispatch state is dropped after this long idle (its window starts afresh).
FORGET_IDLE_S = 600.0
# A dedicated queue's prefetch: so many times its function's max_concurrency.
DEDICATED_PREFETCH_FACTOR = 3


def dedicated_prefetch(max_concurrency: int, bound: int) -> int:
    """What a scheduler holds of a function's dedicated queue, within `bound`
    (FNHOST_ASYNC_PREFETCH): its running messages, as many waiting (a slot freed is
    taken at once by a message already here, not after an ack and a delivery), and as
    many again whose outcome is being recorded (a message is acknowledged only once
    its outcome is stored, which takes longer than a delivery: counted out of the same
    prefetch, they would leave the waiting ones short)."""
    return min(DEDICATED_PREFETCH_FACTOR * max_concurrency, bound)


class QueueConsumers:
    def __init__(
        self,
        settings: Settings,
        connection: AbstractRobustConnection,
        membership: Membership,
        mongo: Mongo,
        runner: TaskRunner,
        functions: FunctionStore,
        cache: FunctionCache,
        flow: Flow,
        router: Router,
        control: ControlBus,
    ) -> None:
        self._settings = settings
        self._control = control
        self._connection = connection
        self._membership = membership
        self._mongo = mongo
        self._runner = runner
        self._functions = functions
        self._cache = cache
        self._flow = flow
        self._router = router
        self._tenants: set[str] = set()
        self._consuming: dict[str, tuple[AbstractQueue, str]] = {}
        # Functions on dedicated queues (tenant, function), and the ones consumed here.
        self._routed: set[tuple[str, str]] = set()
        self._dedicated: dict[tuple[str, str], tuple[AbstractQueue, str]] = {}
        self._in_hand: Counter[tuple[str, str]] = Counter()  # from the dedicated queues
        self._partitions = Partitions(
            settings.queue_owners, settings.queue_owners_max, settings.partition_backlog,
            settings.partition_after_s, time.monotonic,
        )
        # Owner key -> its last delivery here, or (tenants) its last work hint.
        self._delivered: dict[str, float] = {}
        self._owned_before: set[str] = set()
        self._swept_at = -math.inf
        self._probed: dict[str, float] = {}
        self._depths = topology.DepthReader(connection, PROBE_S)
        self._channel: AbstractChannel | None = None
        self._function_channel: AbstractChannel | None = None
        self._dead_channel: AbstractChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._settings.async_prefetch)
        # One channel for the dedicated queues: each consumer has its own prefetch.
        self._function_channel = await self._connection.channel()
        await self._load_tenants()
        await self._load_routed()
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
        kind = event.get("kind")
        if kind == c.CTL_TENANT:
            self._tenants.add(str(event["tenant"]))
            self._wake.set()
        elif kind == c.CTL_WORK:
            tenant = str(event["tenant"])
            self._delivered[tenant] = time.monotonic()
            if tenant not in self._consuming:
                self._wake.set()
        elif kind == c.CTL_ROUTE:
            key = (str(event["tenant"]), str(event["function"]))
            if event.get("mode") == SHARED:
                self._routed.discard(key)
            else:
                self._routed.add(key)
            self._wake.set()
        elif kind == c.CTL_FUNCTION:
            # Pinned or unpinned (`dedicated_queue`), or deleted.
            key = (str(event["tenant"]), str(event["name"]))
            record = await self._cache.get(*key)
            if record is not None and record.routed:
                self._routed.add(key)
            else:
                self._routed.discard(key)
            self._wake.set()
        elif kind == c.CTL_PARTITIONS:
            self._partitions.hear(str(event["key"]), int(event["owners"]))
            self._wake.set()
        elif kind == c.CTL_RESYNC:
            # Back from a broker outage: tenants created meanwhile were not announced,
            # and work hints were lost.
            await self._load_tenants()
            await self._load_routed()
            self._swept_at = -math.inf
            self._wake.set()

    async def _load_tenants(self) -> None:
        async for doc in self._mongo.tenants.find({}, {"_id": 1}):
            self._tenants.add(str(doc["_id"]))

    async def _load_routed(self) -> None:
        self._routed = set(await self._functions.routed())

    def _live(self) -> list[str]:
        live = sorted(m.id for m in self._membership.live())
        if self._settings.scheduler_id not in live:
            live.append(self._settings.scheduler_id)
        return live

    def _owns(self, key: str, live: list[str]) -> bool:
        return self._settings.scheduler_id in owners(key, live, self._partitions.owners(key))

    def owned(self) -> set[str]:
        live = self._live()
        return {t for t in self._tenants if self._owns(t, live)}

    def owned_functions(self) -> set[tuple[str, str]]:
        live = self._live()
        return {(t, f) for t, f in self._routed if self._owns(_function_key(t, f), live)}

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
        owned = self.owned()
        now = time.monotonic()
        if owned - self._owned_before:
            self._swept_at = -math.inf  # newly owned tenants: look for waiting work now
        self._owned_before = owned
        if now - self._swept_at >= self._settings.queue_sweep_s:
            self._swept_at = now
            await self._sweep(owned - self._consuming.keys())
        idle_s = self._settings.queue_idle_s
        wanted = {t for t in owned if now - self._delivered.get(t, -math.inf) < idle_s}
        for tenant in wanted - self._consuming.keys():
            queue = await topology.tenant_queue(self._channel, tenant)
            tag = await queue.consume(functools.partial(self._handle_tenant, tenant))
            self._consuming[tenant] = (queue, tag)
            log.debug("consuming %s", c.tenant_queue(tenant))
        for tenant in set(self._consuming) - wanted:
            if tenant in owned and (await self._depth(c.tenant_queue(tenant)) or 0) > 0:
                self._delivered[tenant] = now  # idle here, yet messages wait: keep at it
                continue
            queue, tag = self._consuming.pop(tenant)
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            log.debug("stopped consuming %s", c.tenant_queue(tenant))
        await self._reconcile_functions()
        await self._watch_backlogs()

    async def _sweep(self, tenants: set[str]) -> None:
        """The backstop of the work hints: owned queues not consumed that hold messages
        (a hint lost in a broker outage, work published before this scheduler owned
        the tenant) are consumed from now on."""
        for tenant in tenants:
            if (await self._depth(c.tenant_queue(tenant)) or 0) > 0:
                self._delivered[tenant] = time.monotonic()

    async def _handle_tenant(self, tenant: str, message: AbstractIncomingMessage) -> None:
        self._delivered[tenant] = time.monotonic()
        await self._runner.handle(message)

    async def _watch_backlogs(self) -> None:
        """As the first owner of a busy queue: more owners while its backlog lasts."""
        live, me, now = self._live(), self._settings.scheduler_id, time.monotonic()
        queues = [(t, c.tenant_queue(t)) for t in self._consuming]
        queues += [(_function_key(*k), c.function_queue(*k)) for k in self._dedicated]
        for key, name in queues:
            if owners(key, live, 1) != [me]:
                self._partitions.forget(key)
                continue
            recent = now - self._delivered.get(key, -math.inf) < 2 * PROBE_S
            if not recent and self._partitions.owners(key) == self._partitions.base:
                self._partitions.forget(key)
                continue
            if now - self._probed.get(key, -math.inf) < PROBE_S:
                continue
            self._probed[key] = now
            depth = await self._depth(name)
            if depth is None:
                continue
            before = self._partitions.owners(key)
            announce = self._partitions.observe(key, depth)
            if announce is None:
                continue
            if announce != before:
                log.info("%s: %d message(s) waiting: consumed by %d scheduler(s) now",
                         name, depth, announce)
            await self._control.publish_or_later(c.CTL_PARTITIONS, key=key, owners=announce)
        for key in [k for k, at in self._delivered.items() if now - at > FORGET_IDLE_S]:
            self._delivered.pop(key, None)
            self._probed.pop(key, None)

    async def _depth(self, name: str) -> int | None:
        """Messages waiting in the queue; None when it is missing or cannot be read."""
        try:
            depth = await self._depths.read(name)
        except Exception as exc:
            log.debug("could not read the depth of %s: %s", name, exc)
            return None
        return None if depth is None else depth[0]

    async def _reconcile_functions(self) -> None:
        assert self._function_channel is not None
        wanted = self.owned_functions()
        for key in wanted - self._dedicated.keys():
            record = await self._cache.get(*key)
            if record is None:
                continue
            prefetch = dedicated_prefetch(record.config.max_concurrency, self._settings.async_prefetch)
            await self._function_channel.set_qos(prefetch_count=prefetch)
            queue = await topology.function_queue(self._function_channel, *key)
            tag = await queue.consume(functools.partial(self._handle_dedicated, key))
            self._dedicated[key] = (queue, tag)
            log.info("consuming %s", c.function_queue(*key))
        for key in list(self._dedicated):
            if key in wanted:
                await self._maybe_demote(*key)
            elif key in self._routed:
                # Still routed, now owned by other schedulers: let them have it.
                await self._stop_function(key)
            else:
                await self._drain(*key)
        self._flow.forget_idle(max(self._settings.demote_after_s, FORGET_IDLE_S))

    async def _handle_dedicated(
        self, key: tuple[str, str], message: AbstractIncomingMessage
    ) -> None:
        self._delivered[_function_key(*key)] = time.monotonic()
        self._in_hand[key] += 1
        try:
            await self._runner.handle_dedicated(message)
        finally:
            self._in_hand[key] -= 1

    async def _maybe_demote(self, tenant: str, function: str) -> None:
        idle = self._flow.idle_for(tenant, function)
        if idle < self._settings.demote_after_s:
            return
        record = await self._cache.get(tenant, function)
        if record is None or record.queue_mode != DEDICATED:
            return  # pinned, or gone (its deletion is announced)
        depth = await self._depths.read(c.function_queue(tenant, function))
        if depth is not None and depth[0] == 0:
            await self._router.demote(tenant, function, f"quiet for {idle:.0f} s")

    async def _drain(self, tenant: str, function: str) -> None:
        """A function back on its tenant's queue: its queue is unbound (nothing new comes)
        and consumed here until empty; then the last consumer deletes it."""
        depth = await self._depths.read(c.function_queue(tenant, function))
        if depth is None:
            self._dedicated.pop((tenant, function), None)
            return
        if depth[0] > 0 or self._in_hand[(tenant, function)] > 0:
            await self._router.unbind(tenant, function)  # the demoter may have crashed first
            return
        await self._stop_function((tenant, function))
        depth = await self._depths.read(c.function_queue(tenant, function))
        if depth is not None and depth == (0, 0):
            with contextlib.suppress(Exception):
                await self._router.delete(tenant, function)

    async def _stop_function(self, key: tuple[str, str]) -> None:
        queue, tag = self._dedicated.pop(key)
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
        log.info("stopped consuming %s", c.function_queue(*key))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for queue, tag in [*self._consuming.values(), *self._dedicated.values()]:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consuming.clear()
        self._dedicated.clear()
        await self._depths.close()


def _function_key(tenant: str, function: str) -> str:
    """A dedicated queue's key for owners and partitions (tenant ids hold no slash)."""
    return f"{tenant}/{function}"


class TimerLoop:
    """Publishes due timers (delays, retry backoff, parked tasks) to their tenant queues,
    and hands due outbox timers (destination records) to `outbox`, which delivers each on
    its own and settles its timer (runtime/outbox.py)."""

    BATCH = 200
    LEASE_S = 30.0

    def __init__(
        self, timers: TimerStore, publisher: InvokePublisher, poll_s: float, *,
        outbox: Callable[[dict[str, Any]], None], lease_s: float = LEASE_S,
    ) -> None:
        self._timers = timers
        self._publisher = publisher
        self._poll_s = poll_s
        self._outbox = outbox
        self._lease_s = lease_s  # longer than the longest outbox attempt
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
        docs = await self._timers.claim_due(self.BATCH, self._lease_s)

        async def fire(doc: dict[str, Any]) -> None:
            if doc.get("kind") == OUTBOX:
                self._outbox(doc)  # returns at once: a slow destination holds no other timer
                return
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
