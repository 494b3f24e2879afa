"""Wires one scheduler process together and runs it until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from runtime import constants as c
from runtime.broker import topology
from runtime.broker.backlog import BacklogMonitor
from runtime.broker.control import CONTROL_KEY, ControlBus
from runtime.broker.hints import WorkHints, hint_interval
from runtime.broker.membership import Membership
from runtime.broker.publisher import InvokePublisher
from runtime.broker.routing import Router
from runtime.cache import FunctionCache
from runtime.destinations import Destinations
from runtime.flow.backpressure import Backpressure
from runtime.hop import HOP_KEY, HopServer
from runtime.outbox import Outbox
from runtime.pool.engine import DockerEngine
from runtime.pool.pool import Pool
from runtime.scheduler.bundle_cache import BundleCache
from runtime.scheduler.bundle_sweep import BundleSweep
from runtime.scheduler.consumers import ExpirySweep, QueueConsumers, TimerLoop
from runtime.scheduler.flow import Flow, Thresholds
from runtime.scheduler.invoker import Invoker
from runtime.scheduler.sync import SyncHandler
from runtime.scheduler.tasks import TaskRunner
from runtime.settings import Settings
from runtime.store.bundles import BundleStore
from runtime.store.functions import FunctionStore
from runtime.store.mongo import Mongo
from runtime.store.rates import RateStore
from runtime.store.tasks import TaskStore
from runtime.store.tenants import TenantStore
from runtime.store.timers import TimerStore
from runtime.store.usage import RecordBytes, UsageStore
from runtime.tasks.admission import FunctionDestinationSubmit, RateLimiter
from runtime.tasks.quotas import QuotaKeeper
from runtime.tasks.submit import Submitter

log = logging.getLogger(__name__)
# How long shutdown waits for the containers to be removed (Docker can be slow).
POOL_CLOSE_S = 30.0
# How long a heartbeat waits for the engine's ping before calling it down.
ENGINE_PING_S = 2.0
# A heartbeat reports at most this many dispatch windows (the busiest are what matter).
MAX_REPORTED_WINDOWS = 500


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mongo = Mongo(settings)
        self.functions = FunctionStore(self.mongo)
        self.cache = FunctionCache(self.functions)
        self.bundle_store = BundleStore(self.mongo, settings.bundle_collect_grace_s)
        self.engine = DockerEngine(settings)
        self.pool = Pool(settings, self.engine)
        self.bundles = BundleCache(settings, self.bundle_store, in_use=self.pool.serves)
        self.invoker = Invoker(
            self.pool, self.engine, self.bundles, settings.sync_wait_s,
            result_limit=settings.result_limit_bytes, log_limit=settings.log_limit_bytes,
        )
        self.tasks = TaskStore(self.mongo, settings.task_retention_s)
        self.timers = TimerStore(self.mongo)
        self.record_bytes = RecordBytes(
            UsageStore(self.mongo, settings.task_retention_s), settings.quota_refresh_s
        )
        self.membership = Membership(settings.heartbeat_s, cluster=settings.cluster_id)
        self.quotas: QuotaKeeper | None = None  # set in start(), with the broker connection
        self._heartbeat: asyncio.Task[None] | None = None
        self._started = time.time()

    async def start(self) -> None:
        if not await self.engine.ping():
            raise RuntimeError("the Docker engine is not reachable (is dockerd running?)")
        if not await self.engine.image_present():
            raise RuntimeError(
                f"runtime image {self.settings.runtime_image} is missing: run scripts/build-image"
            )
        await self.mongo.ping()
        await self.mongo.ensure_indexes()
        await self.tasks.ensure_indexes()
        await self.timers.ensure_indexes()
        self.connection = await topology.connect(self.settings.amqp_url)
        self.publisher = InvokePublisher(self.connection)
        await self.publisher.start()
        self.submitter = Submitter(self.tasks, self.timers, self.publisher)
        # Function destinations meet the limits of any async submission: back-pressure
        # (from the depth of the queues this scheduler submits to), max_rate, the payload
        # limit, and the depth of their chain.
        s = self.settings
        self.backpressure = Backpressure(
            s.backlog_messages, s.backlog_age_s, s.backlog_poll_s,
            max_wait_s=s.backlog_wait_s, burst=s.backlog_burst,
        )
        self.backlog = BacklogMonitor(self.connection, self.backpressure, s.backlog_poll_s)
        self.backlog.start()
        # A function destination's tasks count against the tenant's quotas as a
        # client's do (runtime/tasks/quotas.py: this scheduler's own view).
        self.quotas = QuotaKeeper(
            s, TenantStore(self.mongo), UsageStore(self.mongo, s.task_retention_s),
            self.connection, self.backpressure,
        )
        self.quotas.start()
        submit = FunctionDestinationSubmit(
            self.cache, self.submitter, RateLimiter(RateStore(self.mongo)), self.backpressure,
            self.quotas, payload_limit=s.async_payload_limit, max_chain=s.destination_chain_max,
        )
        self.destinations = Destinations(self.settings, self.connection, submit)
        await self.destinations.start()
        self.outbox = Outbox(self.settings, self.destinations, self.timers, self.tasks)
        self.flow = Flow(Thresholds(
            waiting=self.settings.promote_waiting, wait_s=self.settings.promote_wait_s,
            inflight=self.settings.promote_inflight, share=self.settings.promote_share,
            prefetch=self.settings.async_prefetch,
        ))
        self.router = Router(self.functions, self.cache, self.publisher, self.connection)
        self.runner = TaskRunner(
            self.cache, self.invoker, self.pool, self.tasks, self.timers, self.outbox,
            self.flow, self.router,
            running_write_delay_s=self.settings.running_write_delay_s,
            max_window=self.pool.max_containers,
            record_bytes=self.record_bytes,
        )
        self.record_bytes.start()
        self.control = ControlBus(
            self.connection, self.settings.cluster_id, self.settings.cluster_key(CONTROL_KEY),
            self.settings.control_max_age_s,
        )
        self.router.control = self.control
        hints = WorkHints(self.control, hint_interval(self.settings))
        self.publisher.on_published = lambda tenant, _function: hints.note(tenant)
        self.control.subscribe(self.cache.on_control)
        self.control.subscribe(self._prefetch)
        self.control.subscribe(self.membership.on_control)
        self.control.subscribe(self.runner.on_control)
        await self.control.start()
        await self.pool.start()
        self.consumers = QueueConsumers(
            self.settings, self.connection, self.membership, self.mongo, self.runner,
            self.functions, self.cache, self.flow, self.router, self.control,
        )
        self.control.subscribe(self.consumers.on_control)
        await self.consumers.start()
        self.timer_loop = TimerLoop(
            self.timers, self.publisher, self.settings.timer_poll_s,
            outbox=self.outbox.take, lease_s=max(TimerLoop.LEASE_S, self.outbox.lease_s),
        )
        self.timer_loop.start()
        self.expiry = ExpirySweep(self.tasks, self.settings.expiry_sweep_s)
        self.expiry.start()
        self.bundle_sweep = BundleSweep(self.bundle_store, self.settings.bundle_sweep_s)
        self.bundle_sweep.start()
        self.hop = HopServer(
            self.settings.cluster_key(HOP_KEY),
            SyncHandler(self.cache, self.invoker, self.settings.sync_concurrency)
        )
        await self.hop.start(self.settings.scheduler_bind, self.settings.scheduler_advertise)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        log.info("scheduler %s ready", self.settings.scheduler_id)

    async def _prefetch(self, event: dict[str, Any]) -> None:
        """Retire containers of a changed function; load the new one and unpack its bundle
        at once, off the invoke path."""
        if event.get("kind") != c.CTL_FUNCTION:
            return
        revision = event.get("revision")
        self.pool.retire(str(event["tenant"]), str(event["name"]), int(revision) if revision else None)
        if event.get("sha256"):
            with contextlib.suppress(Exception):
                record = await self.cache.get(str(event["tenant"]), str(event["name"]))
                if record is not None and self.membership.owner(record.tenant) == self.settings.scheduler_id:
                    # Its first burst may come at once: stem cells for it, ahead of it.
                    self.pool.expect(record.config.memory_mb, record.config.max_concurrency)
                await self.bundles.ensure(str(event["tenant"]), str(event["sha256"]))

    async def _heartbeat_loop(self) -> None:
        docker_ok = True
        beats = 0
        while True:
            if beats % 10 == 0:
                try:
                    docker_ok = await asyncio.wait_for(self.engine.ping(), ENGINE_PING_S)
                except TimeoutError:
                    docker_ok = False
            beats += 1
            # Ready only when this scheduler can start containers: the pool follows the
            # engine's event stream and its own starts (no I/O here); the ping catches
            # an engine that hangs without closing the stream.
            problem = self.pool.engine_problem
            if problem is None and not docker_ok:
                problem = "the Docker engine does not answer"
            with contextlib.suppress(Exception):
                await self.control.publish(
                    c.CTL_HEARTBEAT,
                    scheduler=self.settings.scheduler_id,
                    address=self.hop.address,
                    docker=problem is None,
                    docker_problem=problem,
                    started=self._started,
                    pool=self.pool.stats(),
                    flow=self._flow_stats(),
                )
            await asyncio.sleep(self.settings.heartbeat_s)

    def _flow_stats(self) -> dict[str, Any]:
        """Dispatch windows worth showing (busy, or cut below their bound) and the
        queue moves of this scheduler, for the gateways' metrics."""
        shown = sorted(
            (f for f in self.flow.functions() if f[2].busy or f[2].window.limit < f[2].window.ceiling),
            key=lambda f: -(f[2].running + len(f[2].waiters)),
        )
        windows = [
            [tenant, function, f.window.limit, f.window.ceiling, f.running, len(f.waiters)]
            for tenant, function, f in shown
        ]
        return {"windows": windows[:MAX_REPORTED_WINDOWS], **self.router.counters}

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        with contextlib.suppress(Exception):
            await self.control.publish(c.CTL_SCHEDULER_DOWN, scheduler=self.settings.scheduler_id)
        if hasattr(self, "timer_loop"):
            self.timer_loop.close()
        if hasattr(self, "outbox"):
            await self.outbox.close()  # its records wait in their timers for the next start
        if hasattr(self, "expiry"):
            self.expiry.close()
        if hasattr(self, "bundle_sweep"):
            self.bundle_sweep.close()
        if hasattr(self, "consumers"):
            await self.consumers.close()  # no new task; the ones in hand go on
        if hasattr(self, "hop"):
            await self.hop.close()
        if hasattr(self, "runner"):
            await self.runner.drain(self.settings.shutdown_grace_s)
        # Closed before the containers go: the messages of abandoned tasks are back
        # in their queues before any of those tasks could be taken for failed.
        with contextlib.suppress(Exception):
            await self.connection.close()
        try:
            await asyncio.wait_for(self.pool.close(), POOL_CLOSE_S)
        except TimeoutError:
            log.warning("containers still being removed after %.0f s: the next start "
                        "of this scheduler removes what is left", POOL_CLOSE_S)
        if hasattr(self, "backlog"):
            await self.backlog.close()
        if hasattr(self, "destinations"):
            await self.destinations.close()
        if hasattr(self, "submitter"):
            await self.submitter.close()
        await self.record_bytes.close()
        if self.quotas is not None:
            await self.quotas.close()
        self.engine.close()
        await self.mongo.close()


async def run_scheduler(settings: Settings, stop: asyncio.Event) -> None:
    scheduler = Scheduler(settings)
    await scheduler.start()
    try:
        await stop.wait()
    finally:
        await scheduler.stop()
